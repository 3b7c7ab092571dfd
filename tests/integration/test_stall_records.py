# intent_ref: platform.execution
"""A stall is recorded once, and never after its execution's end: both are decided under the execution's row, held
(the sweeper read it unlocked, so an end committed meanwhile was followed by `execution_stalled`, and two sweeper
runs on one quiet execution recorded its stall twice)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import stalls
from shared.engine import start as engine
from shared.engine import steps as store
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_execution_sweeper import AUTHOR, _moved

pytestmark = pytest.mark.integration


def _overdue(api: ApiHarness, pool: ConnectionPool[Any]) -> tuple[uuid.UUID, uuid.UUID]:
    """A running execution whose one step (timeout 1 s) started more than a second ago."""
    name = f"stall-{uuid.uuid4().hex[:8]}"
    tenant_id = api.provision(name, allowed_modules=["artifact.write"]).id
    step = {"id": "slow", "timeout_s": 1, "action": "artifact.write", "name": "a.json", "content": {"a": 1}}
    body = {"name": name, "definition": {"target": "staging", "steps": [step]}}
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(name, AUTHOR))
    assert created.status_code == 201, created.text
    execution_id = _moved(pool, tenant_id, uuid.UUID(created.json()["id"]), ["running"], quiet=False)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.begin_attempt(conn, AttemptKey(execution_id, "slow", "run", 1), action="artifact.write", remote=False)
    time.sleep(1.2)  # past its timeout: overdue for a sweeper with no grace
    return tenant_id, execution_id


def _stream(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[str]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return [event.type for event in repo.events_after(conn, execution_id, 0, 100)]


def test_no_stall_is_recorded_after_an_end_committed_meanwhile(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, execution_id = _overdue(api, app_pool)
    rebuilt = engine.rebuild_input

    def end() -> None:  # the orchestration records its end, in its own transaction
        with tenant_transaction(tenant_id, pool=app_pool) as conn:
            repo.transition(conn, execution_id, "failed", error="step slow failed")

    def end_meanwhile(conn: Any, facts: Any, execution: Any, **kwargs: Any) -> Any:
        ending = threading.Thread(target=end)
        ending.start()
        ending.join(30)
        return rebuilt(conn, facts, execution, **kwargs)

    monkeypatch.setattr(engine, "rebuild_input", end_meanwhile)
    assert stalls.record_stalls(tenant_id, execution_id, grace_s=0.0, pool=app_pool) == []
    assert _stream(app_pool, tenant_id, execution_id)[-1] == "execution_failed"


def test_two_sweeper_runs_on_one_execution_record_its_stall_once(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, execution_id = _overdue(api, app_pool)
    rebuilt = engine.rebuild_input
    together = threading.Barrier(2)

    def side_by_side(conn: Any, facts: Any, execution: Any, **kwargs: Any) -> Any:
        together.wait(10)  # both have read the execution and found no stall recorded
        return rebuilt(conn, facts, execution, **kwargs)

    monkeypatch.setattr(engine, "rebuild_input", side_by_side)
    runs = [
        threading.Thread(
            target=stalls.record_stalls, args=(tenant_id, execution_id), kwargs={"grace_s": 0.0, "pool": app_pool}
        )
        for _ in range(2)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(30)
    assert _stream(app_pool, tenant_id, execution_id).count("execution_stalled") == 1
