# intent_ref: platform.execution
"""A cancel answered 202 ends the run cancelled (ADR 0014, rules 7) even when a step's final failure is recorded
after it and that failure's verdict reaches the orchestration before the cancel's event does."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import machine, progress, worker
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT, WorkItem
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.cancel_race_harness import (
    ACTION,
    TIMEOUT_S,
    Orchestration,
    assert_cancelled,
    cancel,
    end_of_run,
    fail_by_remote,
    lease,
    seeded_execution,
)
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


def _fail_by_worker(tenant_id: uuid.UUID, execution_id: uuid.UUID) -> tuple[str, Any]:
    """The module worker's recorder of a result (`worker._record`), for the same attempt."""
    key = AttemptKey(execution_id, "build", "run", 1)
    item = WorkItem(
        tenant_id=tenant_id,
        execution_id=execution_id,
        step_id="build",
        phase="run",
        attempt=1,
        action=ACTION,
        params={},
        remote=False,
    )
    outcome = worker._record(item, key, {"ok": False, "error": "registry refused the image", "retryable": False})
    assert outcome is not None
    return outcome.event_name, outcome.verdict


def _run_cancelled_then_failed(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, recorder: str, rules: int = machine.RULES
) -> tuple[Orchestration, repo.Execution, list[str], Any]:
    """A running execution whose one remote step is out; the cancel commits first (202), then the step's final
    failure is recorded, and its verdict reaches the orchestration before the cancel's event. Answers the run, the
    execution afterwards, its events and the verdict."""
    execution = seeded_execution(pool, tenant_id)
    run = Orchestration(tenant_id, execution.id, {"id": "build", "action": ACTION, "image": "x:1"}, rules=rules)
    taken = lease(tenant_id)
    dequeued = cancel(tenant_id, execution.id)
    assert dequeued == []  # the work was leased: the cancel lets it end
    verdict: Any = None
    if recorder == "timeout":
        # The step's timeout, settled by record_outcomes after the cancel committed, answered to the run at once.
        run.fire_timer(TIMEOUT_S + 1)
    else:
        if recorder == "remote":
            name, verdict = fail_by_remote(execution.id, taken)
        else:
            name, verdict = _fail_by_worker(tenant_id, execution.id)
        run.raise_event(name, verdict)
    run.raise_event(CANCEL_EVENT, {"by": "alice"})  # the cancel's event, raised after its 202, comes last
    ended, events = end_of_run(pool, tenant_id, run, execution.id)
    return run, ended, events, verdict


@pytest.mark.parametrize("recorder", ["remote", "worker", "timeout"])
def test_a_failure_recorded_after_an_accepted_cancel_ends_the_run_cancelled_though_its_verdict_came_first(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], recorder: str
) -> None:
    """Before: the failure became the run's cause (the reducer ignored the cancel's later event) and the run ended
    failed after the cancel was answered 202 "ends cancelled"."""
    run, ended, events, verdict = _run_cancelled_then_failed(app_pool, new_tenant(), recorder)
    if verdict is not None:
        assert verdict["cancel_first"] is True and verdict["ok"] is False
    assert run.result is not None and run.result["failed_step"] is None
    # The stream shows the cancel, then the step's failure during it, and the cancelled end.
    assert_cancelled(ended, events)


def test_an_execution_started_under_rules_6_still_ends_failed(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Started before rules 7: its history replays as recorded, so the verdict's flag is not read."""
    _, ended, events, verdict = _run_cancelled_then_failed(app_pool, new_tenant(), "remote", rules=6)
    assert verdict["cancel_first"] is True
    assert ended.status == "failed" and events[-1] == "execution_failed"


def test_a_failure_recorded_before_any_cancel_says_nothing_of_one(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant_id = new_tenant()
    execution = seeded_execution(app_pool, tenant_id)
    Orchestration(tenant_id, execution.id, {"id": "build", "action": ACTION, "image": "x:1"})
    _, verdict = fail_by_remote(execution.id, lease(tenant_id))
    assert verdict == {"ok": False, "error": "registry refused the image", "retryable": False, "state": "failed"}


@pytest.mark.parametrize("begun", [True, False], ids=["its-start-committed", "its-start-never-committed"])
def test_a_failed_dispatchs_settle_after_a_cancel_says_the_cancel_came_first_when_asked(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], begun: bool
) -> None:
    """The attempts of a dispatch that failed for good are settled by record_outcomes (rules 4); a cancel recorded
    before is told to a run that asks (rules 7), and a run under earlier rules is answered as before."""
    tenant_id = new_tenant()
    execution = _execution(app_pool, tenant_id, path=["running"])
    key = AttemptKey(execution.id, "build", "run", 1)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", ACTION, 1)])
        if begun:
            store.begin_attempt(conn, key, action=ACTION, remote=False)
    cancel(tenant_id, execution.id)
    outcome = machine.Outcome(
        step_id="build", phase=machine.Phase.RUN, attempt=1, ok=False, state="failed", error="lost", action=ACTION
    )
    answers = [
        progress.record_outcomes(
            machine.RecordOutcomes(
                execution_id=str(execution.id), tenant_id=str(tenant_id), outcomes=[outcome], cancel_first=asked
            )
        )
        for asked in (False, True)
    ]
    (before,), (asked,) = answers
    assert "cancel_first" not in before and before["ok"] is False
    assert asked == {**before, "cancel_first": True}
