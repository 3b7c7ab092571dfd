# intent_ref: platform.execution
"""A real execution driven in-process for the races of a cancel against a step's failure (ADR 0014)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, machine, progress, remote, work_queue
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.steps import StepSeed
from tests.integration.test_executions import _execution

ACTION = "build-container"
TIMEOUT_S = 600
REMOTE_PLAN: dict[str, Any] = {"kind": "module", "remote": True, "timeout_s": TIMEOUT_S}
"""The plan of a step a remote worker runs."""
_ACTIVITIES: dict[machine.Activity, Callable[[Any], Any]] = {
    machine.Activity.DISPATCH_STEPS: lambda batch: progress.dispatch_steps(batch).model_dump(mode="json"),
    machine.Activity.RECORD_OUTCOMES: progress.record_outcomes,
    machine.Activity.RECORD_STATUS: lambda request: progress.record_status(request).model_dump(mode="json"),
}


class Orchestration:
    """The orchestrator in-process: the reducer, its activities run for real as each is called, and external events
    and the timer applied in the order the test gives them (as the task hub delivers them, one at a time)."""

    def __init__(
        self,
        tenant_id: uuid.UUID,
        execution_id: uuid.UUID,
        step: dict[str, Any],
        plan: dict[str, Any] = REMOTE_PLAN,
        rules: int = machine.RULES,
    ) -> None:
        self.now = datetime.now(UTC)
        start = {
            "execution_id": str(execution_id),
            "tenant_id": str(tenant_id),
            "definition": {"steps": [step]},
            "plan": {step["id"]: plan},
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


def seeded_execution(
    pool: ConnectionPool[Any],
    tenant_id: uuid.UUID,
    step_id: str = "build",
    action: str = ACTION,
    max_attempts: int = 1,
    path: list[repo.Status] | None = None,
) -> repo.Execution:
    """An execution with its one step seeded."""
    execution = _execution(pool, tenant_id, path=path)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed(step_id, action, max_attempts)])
    return execution


def cancel(tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[store.Attempt]:
    """What the cancel route records in its transaction (accepted: no failure is recorded yet): the queued work it
    ended."""
    with tenant_transaction(tenant_id) as conn:
        control.request_cancel(conn, execution_id, "alice")
        return work_queue.cancel_queued(conn, execution_id)


def lease(tenant_id: uuid.UUID) -> work_queue.Lease:
    """The remote worker takes the step's work: a cancel then lets it end (it is no longer queued)."""
    with tenant_transaction(tenant_id) as conn:
        (taken,) = work_queue.lease(conn, tenant_id, actions=[ACTION], max_items=1, lease_s=60, worker="w").leases
    return taken


def fail_by_remote(execution_id: uuid.UUID, taken: work_queue.Lease, retryable: bool = False) -> tuple[str, Any]:
    """The remote worker reports the leased work failed: answers the verdict its recorder raises once the result has
    committed."""
    result = remote.RemoteResult(ok=False, error="registry refused the image", retryable=retryable)
    recorded = remote.record(taken.task_token, execution_id, "build", "run", result)
    return recorded.key.event_name, recorded.verdict


def end_of_run(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, run: Orchestration, execution_id: uuid.UUID
) -> tuple[repo.Execution, list[str]]:
    """The execution once the run has ended, and its events' types; the run's end and the row's agree."""
    assert run.result is not None, "the run did not end"
    with tenant_transaction(tenant_id, pool=pool) as conn:
        execution = repo.get_execution(conn, execution_id)
        events = [event.type for event in repo.events_after(conn, execution_id, 0, 1000)]
    assert run.result["status"] == execution.status
    return execution, events


def assert_cancelled(execution: repo.Execution, events: list[str]) -> None:
    """The run ended cancelled, and its stream shows the cancel, then the step's failure during it, then the end."""
    assert (execution.status, execution.error) == ("cancelled", "cancelled")
    assert events.count("cancel_requested") == 1 and events.count("step_failed") == 1
    assert events.index("cancel_requested") < events.index("step_failed")
    assert events[-1] == "execution_cancelled" and "execution_failed" not in events
