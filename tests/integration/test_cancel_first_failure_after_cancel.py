# intent_ref: platform.execution
"""A cancel answered 202 ends the run cancelled (ADR 0014, rules 7) even when a step's final failure is recorded
after it and that failure's verdict reaches the orchestration before the cancel's event does."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, machine, progress, remote, work_queue, worker
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT, WorkItem
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

ACTION = "build-container"
TIMEOUT_S = 600
_ACTIVITIES: dict[machine.Activity, Callable[[Any], Any]] = {
    machine.Activity.DISPATCH_STEPS: lambda batch: progress.dispatch_steps(batch).model_dump(mode="json"),
    machine.Activity.RECORD_OUTCOMES: progress.record_outcomes,
    machine.Activity.RECORD_STATUS: lambda request: progress.record_status(request).model_dump(mode="json"),
}


class _Orchestration:
    """The orchestrator in-process: the reducer, its activities run for real as each is called, and external events
    and the timer applied in the order the test gives them (as the task hub delivers them, one at a time)."""

    def __init__(self, tenant_id: uuid.UUID, execution_id: uuid.UUID, step: dict[str, Any], rules: int) -> None:
        self.now = datetime.now(UTC)
        start = {
            "execution_id": str(execution_id),
            "tenant_id": str(tenant_id),
            "definition": {"steps": [step]},
            "plan": {step["id"]: {"kind": "module", "remote": True, "timeout_s": TIMEOUT_S}},
            "rules": rules,
        }
        self.result: dict[str, Any] | None = None
        self.state, commands = machine.begin(start, self.now)
        self._run(commands)

    def raise_event(self, name: str, data: Any) -> None:
        self.state, commands = machine.reduce(self.state, machine.EventRaised(name, data, self.now))
        self._run(commands)

    def fire_timer(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.state, commands = machine.reduce(self.state, machine.TimerFired(self.now))
        self._run(commands)

    def _run(self, commands: list[machine.Command]) -> None:
        queue = list(commands)
        while queue:
            command = queue.pop(0)
            if isinstance(command, machine.CallActivity):
                done = machine.ActivityDone(command.id, _ACTIVITIES[command.name](command.input), self.now)
                self.state, more = machine.reduce(self.state, done)
                queue.extend(more)
            elif isinstance(command, machine.Complete):
                self.result = command.result
            else:
                assert isinstance(command, machine.WaitForEvent | machine.SetTimer), command


def _cancel(tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[store.Attempt]:
    """What the cancel route records in its transaction (accepted here: no failure is recorded yet): the queued work
    it ended."""
    with tenant_transaction(tenant_id) as conn:
        control.request_cancel(conn, execution_id, "alice")
        return work_queue.cancel_queued(conn, execution_id)


def _lease(tenant_id: uuid.UUID) -> work_queue.Lease:
    """The remote worker takes the step's work: a cancel then lets it end (it is no longer queued)."""
    with tenant_transaction(tenant_id) as conn:
        (lease,) = work_queue.lease(conn, tenant_id, actions=[ACTION], max_items=1, lease_s=60, worker="w").leases
    return lease


def _fail_by_remote(tenant_id: uuid.UUID, execution_id: uuid.UUID, lease: work_queue.Lease) -> tuple[str, Any]:
    result = remote.RemoteResult(ok=False, error="registry refused the image", retryable=False)
    key, verdict = remote.complete(lease.task_token, execution_id, "build", "run", result)
    return key.event_name, verdict


def _fail_by_worker(tenant_id: uuid.UUID, execution_id: uuid.UUID, lease: work_queue.Lease) -> tuple[str, Any]:
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
) -> tuple[_Orchestration, repo.Execution, list[str], Any]:
    """A running execution whose one remote step is out; the cancel commits first (202), then the step's final
    failure is recorded, and its verdict reaches the orchestration before the cancel's event. Answers the run, the
    execution afterwards, its events and the verdict."""
    execution = _execution(pool, tenant_id)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", ACTION, 1)])
    run = _Orchestration(tenant_id, execution.id, {"id": "build", "action": ACTION, "image": "x:1"}, rules)
    lease = _lease(tenant_id)
    dequeued = _cancel(tenant_id, execution.id)
    assert dequeued == []  # the work was leased: the cancel lets it end
    verdict: Any = None
    if recorder == "timeout":
        # The step's timeout, settled by record_outcomes after the cancel committed, answered to the run at once.
        run.fire_timer(TIMEOUT_S + 1)
    else:
        fail = _fail_by_remote if recorder == "remote" else _fail_by_worker
        name, verdict = fail(tenant_id, execution.id, lease)
        run.raise_event(name, verdict)
    run.raise_event(CANCEL_EVENT, {"by": "alice"})  # the cancel's event, raised after its 202, comes last
    assert run.result is not None, "the run did not end"
    with tenant_transaction(tenant_id, pool=pool) as conn:
        ended = repo.get_execution(conn, execution.id)
        events = [event.type for event in repo.events_after(conn, execution.id, 0, 1000)]
    assert run.result["status"] == ended.status
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
    assert (ended.status, ended.error) == ("cancelled", "cancelled")
    assert run.result is not None and run.result["failed_step"] is None
    # The stream shows the cancel, then the step's failure during it, and the cancelled end.
    assert events.count("cancel_requested") == 1 and events.count("step_failed") == 1
    assert events.index("cancel_requested") < events.index("step_failed")
    assert events[-1] == "execution_cancelled" and "execution_failed" not in events


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
    execution = _execution(app_pool, tenant_id)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", ACTION, 1)])
    _Orchestration(tenant_id, execution.id, {"id": "build", "action": ACTION, "image": "x:1"}, machine.RULES)
    _, verdict = _fail_by_remote(tenant_id, execution.id, _lease(tenant_id))
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
    _cancel(tenant_id, execution.id)
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
