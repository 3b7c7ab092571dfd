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

from shared.db.session import tenant_transaction
from shared.engine import machine, progress, worker
from shared.engine import steps as store
from shared.engine.protocol import WorkItem
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_module_worker_claims import _dispatched, _Echo, _Raiser

pytestmark = pytest.mark.integration

NOT_STARTED = "could not start: connection refused"


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> Iterator[uuid.UUID]:
    yield api.provision("failed-dispatch").id


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


def test_an_attempt_whose_start_never_committed_is_recorded_ended_before_a_late_start(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("work", "test.echo", 2)])
    item = WorkItem(
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
    assert _settle(item) == {"ok": False, "error": NOT_STARTED, "retryable": True, "state": "failed"}
    key = AttemptKey(execution.id, "work", "run", 1)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        late, created = store.begin_attempt(conn, key, action="test.echo", remote=False)
        step = next(s for s in store.list_steps(conn, execution.id) if s["step_id"] == "work")
    assert not created and late.state == "failed" and late.error == NOT_STARTED
    # The step reads as failed, from where the reducer's retry note moves it.
    assert (step["state"], step["error"]) == ("failed", NOT_STARTED)
