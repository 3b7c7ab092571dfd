# intent_ref: platform.execution
"""A cancel's answer says how the run ends (ADR 0014, rules 8) for failures the run decides itself: recorded before
they are applied, by a transaction that reads the cancel, so that a cancel after the record is refused (409
already-failing, the run ends failed) and one before it ends the run cancelled."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, machine, progress
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT
from shared.engine.steps import StepSeed
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

BLOB = {"$blob": {"container": "c", "name": "n", "size": 10, "sha256": "0" * 64}}
UNREAD = "the stored output of step a could not be read: blob gone"
Hook = Callable[[machine.CallActivity], None]


class Driven:
    """The reducer with its activities run for real as each is called (as cancel_race_harness.Orchestration), except
    `load_output`, which fails for good (its blob is gone), and the calls `fails` names, which fail once; `before`
    runs before the first call it accepts, `after` once that call has committed (before the run reads its answer)."""

    def __init__(
        self,
        tenant_id: uuid.UUID,
        execution_id: uuid.UUID,
        steps: list[dict[str, Any]],
        plan: dict[str, Any],
        *,
        reused: dict[str, Any] | None = None,
        fails: Callable[[machine.CallActivity], bool] = lambda _: False,
        before: tuple[Callable[[machine.CallActivity], bool], Hook] | None = None,
        after: tuple[Callable[[machine.CallActivity], bool], Hook] | None = None,
    ) -> None:
        self.now = datetime.now(UTC)
        self.result: dict[str, Any] | None = None
        self._fails, self._failed = fails, False
        self._before, self._after = before, after
        start = {
            "execution_id": str(execution_id),
            "tenant_id": str(tenant_id),
            "definition": {"steps": steps},
            "plan": plan,
            "reused": reused or {},
            "rules": machine.RULES,
        }
        self.state, commands = machine.begin(start, self.now)
        self._run(commands)

    def raise_event(self, name: str, data: Any) -> None:
        self._reduce(machine.EventRaised(name, data, self.now))

    def fire_timer(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self._reduce(machine.TimerFired(self.now))

    def _reduce(self, event: machine.Event) -> None:
        self.state, commands = machine.reduce(self.state, event)
        self._run(commands)

    def _call(self, command: machine.CallActivity) -> machine.Event:
        if self._before is not None and self._before[0](command):
            hook, self._before = self._before[1], None
            hook(command)
        if command.name is machine.Activity.LOAD_OUTPUT:
            return machine.ActivityFailed(command.id, "blob gone", self.now)
        if not self._failed and self._fails(command):
            self._failed = True
            return machine.ActivityFailed(command.id, "database away", self.now)
        model = command.input
        if isinstance(model, machine.DispatchSteps):
            result: Any = progress.dispatch_steps(model).model_dump(mode="json")
        elif isinstance(model, machine.RecordOutcomes):
            result = progress.record_outcomes(model)
        else:
            assert isinstance(model, machine.RecordStatus), command
            result = progress.record_status(model).model_dump(mode="json")
        if self._after is not None and self._after[0](command):
            hook, self._after = self._after[1], None
            hook(command)
        return machine.ActivityDone(command.id, result, self.now)

    def _run(self, commands: list[machine.Command]) -> None:
        queue = list(commands)
        while queue:
            command = queue.pop(0)
            if isinstance(command, machine.CallActivity):
                self.state, more = machine.reduce(self.state, self._call(command))
                queue.extend(more)
            elif isinstance(command, machine.Complete):
                self.result = command.result


def _cancel(tenant_id: uuid.UUID, execution_id: uuid.UUID) -> str:
    """What the cancel route decides in its transaction."""
    with tenant_transaction(tenant_id) as conn:
        try:
            control.request_cancel(conn, execution_id, "alice")
        except control.AlreadyFailingError:
            return "already-failing"
    return "accepted"


def _cancel_into(answers: list[str], tenant_id: uuid.UUID) -> Hook:
    """A hook that cancels the call's execution, keeping the answer."""

    def hook(command: machine.CallActivity) -> None:
        execution_id = getattr(command.input, "execution_id")  # noqa: B009  # every call here names it
        answers.append(_cancel(tenant_id, uuid.UUID(execution_id)))

    return hook


def _ended(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, run: Driven, execution_id: uuid.UUID
) -> tuple[repo.Execution, list[repo.ExecutionEvent], dict[str, dict[str, Any]]]:
    assert run.result is not None, "the run did not end"
    with tenant_transaction(tenant_id, pool=pool) as conn:
        execution = repo.get_execution(conn, execution_id)
        events = repo.events_after(conn, execution_id, 0, 1000)
        steps = {row["step_id"]: row for row in store.list_steps(conn, execution_id)}
        attempts = store.list_attempts(conn, execution_id)
    assert run.result["status"] == execution.status
    # Nothing of an ended run reads as still to run: no attempt open, no step under way.
    assert [a.key for a in attempts if a.state == "dispatched"] == []
    assert {row["state"] for row in steps.values()} <= {"succeeded", "failed", "cancelled", "pending", "skipped"}
    return execution, events, steps


# ------------------------------------------------------------------------------ a stored output that cannot be read
READS_A: list[dict[str, Any]] = [
    {"id": "a", "action": "build-container"},
    {"id": "b", "action": "build-container", "depends_on": ["a"], "v": "${steps.a.output.part}"},
    {"id": "c", "action": "build-container", "depends_on": ["a"], "w": "${steps.a.output.part}"},
]


def _reusing_a_stored_output(
    pool: ConnectionPool[Any],
    tenant_id: uuid.UUID,
    before: tuple[Callable[[machine.CallActivity], bool], Hook] | None = None,
    after: tuple[Callable[[machine.CallActivity], bool], Hook] | None = None,
) -> tuple[Driven, uuid.UUID]:
    """A retry's run reusing `a`'s stored output, which b and c read; reading it back fails for good."""
    execution = _execution(pool, tenant_id)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(
            conn,
            execution.id,
            [
                StepSeed("a", "build-container", 1, reused_output=BLOB, reused=True),
                StepSeed("b", "build-container", 1),
                StepSeed("c", "build-container", 1),
            ],
        )
    plan = {step["id"]: {"kind": "module", "remote": True, "timeout_s": 600} for step in READS_A}
    return Driven(tenant_id, execution.id, READS_A, plan, reused={"a": BLOB}, before=before, after=after), execution.id


def _moves_to_running(command: machine.CallActivity) -> bool:
    """The run's first dispatch (nothing starts before the output is read), which LOAD_OUTPUT's failure follows."""
    return isinstance(command.input, machine.DispatchSteps) and command.input.status is machine.Status.RUNNING


def _ends(command: machine.CallActivity) -> bool:
    """The run's record of its end: the failure is applied by then (unrecorded before, recorded first now)."""
    return isinstance(command.input, machine.RecordStatus) and command.input.status in machine.TERMINAL


def test_a_cancel_after_an_unreadable_output_is_recorded_is_refused_and_the_run_ends_failed(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Before: nothing was recorded (202 "ends cancelled"), and the run ended failed."""
    tenant_id = new_tenant()
    answers: list[str] = []
    run, execution_id = _reusing_a_stored_output(app_pool, tenant_id, before=(_ends, _cancel_into(answers, tenant_id)))
    assert answers == ["already-failing"]
    execution, events, steps = _ended(app_pool, tenant_id, run, execution_id)
    assert (execution.status, execution.error) == ("failed", UNREAD)
    assert "cancel_requested" not in [event.type for event in events]
    # The step that reads it failed before it ran, as one whose parameters cannot resolve; c never started.
    assert (steps["b"]["state"], steps["b"]["error"], steps["b"]["attempt"]) == ("failed", UNREAD, 0)
    assert steps["c"]["state"] == "pending"


def test_a_cancel_accepted_before_that_record_ends_the_run_cancelled(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Before: the failure was the cause, and the run ended failed though the cancel was answered 202."""
    tenant_id = new_tenant()
    answers: list[str] = []
    # Committed after the run's move to running, before the failure reaches a transaction that reads a cancel.
    run, execution_id = _reusing_a_stored_output(
        app_pool, tenant_id, after=(_moves_to_running, _cancel_into(answers, tenant_id))
    )
    assert answers == ["accepted"]
    run.raise_event(CANCEL_EVENT, {"by": "alice"})  # the cancel's own event, late: changes nothing
    execution, events, steps = _ended(app_pool, tenant_id, run, execution_id)
    assert (execution.status, execution.error) == ("cancelled", "cancelled")
    types = [event.type for event in events]
    assert types.index("cancel_requested") < types.index("step_failed") and types[-1] == "execution_cancelled"
    assert steps["b"]["state"] == "failed"


# --------------------------------------------------------------------------- a record of outcomes that failed for good
WAITS: list[dict[str, Any]] = [{"id": "w", "action": "wait", "seconds": 5}]


def _first_settle(command: machine.CallActivity) -> bool:
    return command.name is machine.Activity.RECORD_OUTCOMES


def _a_waits_end_unrecorded(
    pool: ConnectionPool[Any],
    tenant_id: uuid.UUID,
    before: tuple[Callable[[machine.CallActivity], bool], Hook] | None = None,
    after: tuple[Callable[[machine.CallActivity], bool], Hook] | None = None,
) -> tuple[Driven, uuid.UUID]:
    """A wait whose end's record fails for good (the database was away for all its tries)."""
    execution = _execution(pool, tenant_id)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("w", "wait", 1)])
    run = Driven(
        tenant_id, execution.id, WAITS, {"w": {"kind": "wait"}}, fails=_first_settle, before=before, after=after
    )
    run.fire_timer(5)
    return run, execution.id


def test_a_cancel_after_a_failed_record_is_recorded_is_refused_and_nothing_is_left_open(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Before: the attempt was failed in the run only: the cancel was answered 202 and the run ended failed, with
    its step `running` and its attempt `dispatched` for ever."""
    tenant_id = new_tenant()
    answers: list[str] = []

    run, execution_id = _a_waits_end_unrecorded(app_pool, tenant_id, before=(_ends, _cancel_into(answers, tenant_id)))
    assert answers == ["already-failing"]
    execution, _, steps = _ended(app_pool, tenant_id, run, execution_id)
    assert (execution.status, execution.error) == ("failed", "database away")
    assert steps["w"]["state"] == "failed"


def test_a_cancel_accepted_before_the_failure_is_recorded_ends_the_run_cancelled(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant_id = new_tenant()
    answers: list[str] = []
    seen: list[machine.CallActivity] = []

    def after_the_failed_record(command: machine.CallActivity) -> bool:
        # The call that follows it: the end (the failure applied unrecorded) before, its record first now.
        seen.append(command)
        return any(_first_settle(earlier) for earlier in seen[:-1])

    run, execution_id = _a_waits_end_unrecorded(
        app_pool, tenant_id, before=(after_the_failed_record, _cancel_into(answers, tenant_id))
    )
    assert answers == ["accepted"]
    run.raise_event(CANCEL_EVENT, {"by": "alice"})
    execution, events, _ = _ended(app_pool, tenant_id, run, execution_id)
    assert (execution.status, execution.error) == ("cancelled", "cancelled")
    assert [event.type for event in events][-1] == "execution_cancelled"


# --------------------------------------------------------------------------- a step failed before any attempt began
def test_a_step_failed_before_its_first_attempt_reads_attempt_0_with_none_listed(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Before: it read attempt 1 with no attempt listed (a pending step reads 0, and so did it before the retry's
    case was fixed); a cancel after it is still refused."""
    tenant_id = new_tenant()
    execution = _execution(app_pool, tenant_id, path=["running"])
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("a", "build-container", 1)])
        failed = machine.StepNote(kind=machine.NoteKind.FAILED, step_id="a", attempt=1, error="cannot resolve")
        progress._note(conn, execution.id, failed)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        (step,) = store.list_steps(conn, execution.id)
        assert (step["state"], step["attempt"], store.list_attempts(conn, execution.id)) == ("failed", 0, [])
        events = [event.data for event in repo.events_after(conn, execution.id, 0, 100) if event.type == "step_failed"]
        assert events == [{"attempt": 1, "error": "cannot resolve"}]
    assert _cancel(tenant_id, execution.id) == "already-failing"


# ----------------------------------------------------------------------- parameters that cannot resolve, after a cancel
UNRESOLVED: list[dict[str, Any]] = [
    {"id": "a", "action": "build-container"},
    {"id": "b", "action": "build-container", "depends_on": ["a"], "v": "${steps.a.output.missing}"},
]


def _records_a_failure(command: machine.CallActivity) -> bool:
    return isinstance(command.input, machine.DispatchSteps) and any(
        note.kind is machine.NoteKind.FAILED for note in command.input.notes
    )


def test_a_cancel_accepted_before_a_failed_start_is_recorded_ends_the_run_cancelled(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Before: the dispatch recorded b failed after the cancel (202) and said so, and the run ended failed."""
    tenant_id = new_tenant()
    execution = _execution(app_pool, tenant_id, path=["running"])
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        store.seed_steps(
            conn,
            execution.id,
            [
                StepSeed("a", "build-container", 1, reused_output={"n": 1}, reused=True),
                StepSeed("b", "build-container", 1),
            ],
        )
    answers: list[str] = []
    plan = {step["id"]: {"kind": "module", "remote": True, "timeout_s": 600} for step in UNRESOLVED}
    run = Driven(
        tenant_id,
        execution.id,
        UNRESOLVED,
        plan,
        reused={"a": {"n": 1}},
        before=(_records_a_failure, _cancel_into(answers, tenant_id)),
    )
    assert answers == ["accepted"]
    run.raise_event(CANCEL_EVENT, {"by": "alice"})
    ended, events, steps = _ended(app_pool, tenant_id, run, execution.id)
    assert (ended.status, ended.error) == ("cancelled", "cancelled")
    types = [event.type for event in events]
    assert types.index("cancel_requested") < types.index("step_failed") and types[-1] == "execution_cancelled"
    assert steps["b"]["state"] == "failed"
