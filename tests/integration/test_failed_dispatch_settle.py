# intent_ref: platform.execution
"""A dispatch that failed for good is settled through `record_outcomes` (rules 4): an attempt it had started ends
failed and its work is never run; one that had a result keeps it; one whose start never committed is recorded
ended, so that a late commit of that start changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import control, machine, progress, worker
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.protocol import WorkItem
from shared.engine.steps import AttemptKey, StepSeed
from shared.registry.repository import find_head
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_module_worker_claims import _dispatched, _Echo, _Raiser

pytestmark = pytest.mark.integration

NOT_STARTED = "could not start: connection refused"


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> Iterator[uuid.UUID]:
    yield api.provision("failed-dispatch", allowed_modules=["wait", "intent"]).id


def _settle(item: WorkItem) -> dict[str, Any]:
    """What the reducer asks of a dispatch that failed for good, for this item's attempt."""
    (verdict,) = progress.record_outcomes(
        machine.RecordOutcomes(
            execution_id=str(item.execution_id),
            tenant_id=str(item.tenant_id),
            outcomes=[
                machine.Outcome(
                    step_id=item.step_id,
                    phase=machine.Phase(item.phase),
                    attempt=item.attempt,
                    ok=False,
                    state="failed",
                    error=NOT_STARTED,
                    action=item.action,
                )
            ],
        )
    )
    return verdict


def test_a_started_attempt_ends_failed_and_its_published_work_is_never_run(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    echo, raiser = _Echo(), _Raiser()
    item = _dispatched(app_pool, tenant, echo.action)
    assert _settle(item) == {"ok": False, "error": NOT_STARTED, "retryable": True, "state": "failed"}
    # The work item the failed dispatch had published arrives: its attempt is over, so it does not run (the worker
    # hands over the recorded verdict again, as for any redelivery of a finished attempt).
    asyncio.run(worker.process_batch([item.model_dump_json()], raiser, {echo.action: echo}))
    assert echo.runs == []
    assert raiser.to(item.execution_id) in (
        [],
        [{"ok": False, "error": NOT_STARTED, "retryable": True, "state": "failed"}],
    )


def test_an_attempt_that_had_its_result_keeps_it(app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    echo, raiser = _Echo(), _Raiser()
    item = _dispatched(app_pool, tenant, echo.action)
    asyncio.run(worker.process_batch([item.model_dump_json()], raiser, {echo.action: echo}))
    assert _settle(item) == {"ok": True, "output": {"ran": echo.runs[0]}}
    assert len(echo.runs) == 1


def _unstarted(app_pool: ConnectionPool[Any], tenant: uuid.UUID, path: list[str]) -> WorkItem:
    """An execution along `path` whose step `work` has no recorded attempt (its dispatch never committed)."""
    execution = _execution(app_pool, tenant, path=path)  # type: ignore[arg-type]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("work", "test.echo", 2)])
    return WorkItem(
        tenant_id=tenant,
        execution_id=execution.id,
        step_id="work",
        phase="run",
        attempt=1,
        action="test.echo",
        params={},
        remote=False,
        timeout_s=60,
    )


def test_an_attempt_whose_start_never_committed_is_recorded_ended_before_a_late_start(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    item = _unstarted(app_pool, tenant, ["running"])
    assert _settle(item) == {"ok": False, "error": NOT_STARTED, "retryable": True, "state": "failed"}
    key = AttemptKey(item.execution_id, "work", "run", 1)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        late, created = store.begin_attempt(conn, key, action="test.echo", remote=False)
        step = next(s for s in store.list_steps(conn, item.execution_id) if s["step_id"] == "work")
    assert not created and late.state == "failed" and late.error == NOT_STARTED
    # The step reads as failed, from where the reducer's retry note moves it.
    assert (step["state"], step["error"]) == ("failed", NOT_STARTED)


@pytest.mark.parametrize("path", [["running", "cancelled"], ["running"]], ids=["ended", "cancel-recorded"])
def test_an_attempt_its_dispatch_would_refuse_now_is_not_begun(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, path: list[str]
) -> None:
    # Begun and failed after the execution had ended (or a cancel was recorded), it wrote step_started and
    # step_failed after the end, and moved a step that never ran to failed.
    item = _unstarted(app_pool, tenant, path)
    if path == ["running"]:
        with tenant_transaction(tenant, pool=app_pool) as conn:
            control.request_cancel(conn, item.execution_id, "someone")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        before = [e.type for e in repo.events_after(conn, item.execution_id, 0)]
    assert _settle(item) == {"ok": False, "error": NOT_STARTED, "retryable": False, "state": "failed"}
    with tenant_transaction(tenant, pool=app_pool) as conn:
        after = [e.type for e in repo.events_after(conn, item.execution_id, 0)]
        attempt = store.get_attempt(conn, AttemptKey(item.execution_id, "work", "run", 1))
        step = next(s for s in store.list_steps(conn, item.execution_id) if s["step_id"] == "work")
    assert after == before and attempt is None and step["state"] == "pending"


def test_a_child_the_failed_dispatch_had_started_is_stopped(api: ApiHarness, tenant: uuid.UUID) -> None:
    # Its attempt ended "could not start", the retry starts another child: the first would run for no one, and the
    # sweeper would start it if its orchestration never had.
    author = api.headers("failed-dispatch", ["Intent.Author"])
    for name, steps in (("leaf", [{"id": "pause", "action": "wait", "seconds": 1}]), ("top", None)):
        steps = steps or [{"id": "kid", "action": "intent.run", "intent": "leaf"}]
        body = {"name": name, "definition": {"target": "staging", "steps": steps}}
        assert api.client.post("/api/v1/intents", json=body, headers=author).status_code == 201
    with tenant_transaction(tenant) as conn:
        top = find_head(conn, "intent", "top")
        assert top is not None
        parent, _ = repo.create_execution(
            conn,
            execution_id=uuid.uuid4(),
            intent_id=top.id,
            intent_version=1,
            target="staging",
            input={},
            requester=Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Deployer"}), app_only=False),
        )
        store.seed_steps(conn, parent.id, [StepSeed("kid", "intent.run", 1)])
    started = progress.record_progress(
        {
            "kind": "start_child",
            "execution_id": str(parent.id),
            "tenant_id": str(tenant),
            "step_id": "kid",
            "attempt": 1,
            "params": {"intent": "leaf"},
        }
    )
    child_id = uuid.UUID(started["execution_id"])
    item = WorkItem(
        tenant_id=tenant,
        execution_id=parent.id,
        step_id="kid",
        phase="run",
        attempt=1,
        action="intent.run",
        params={},
        remote=False,
        timeout_s=60,
    )
    assert _settle(item)["ok"] is False
    with tenant_transaction(tenant) as conn:
        child = repo.get_execution(conn, child_id)
    assert child.status == "cancelled"
