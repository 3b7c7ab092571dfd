# intent_ref: platform.execution
"""Reducer rules 9 on the real activities (ADR 0025): a compensation given up (its parameters cannot resolve) is
recorded on its step as a compensation that will not finish, compensation_failed with its event and
`step.compensation_failed`, before the run's end; a retry decided in the reduction that stops the run is never
recorded, its step cancelled by that reduction's dispatch. Runs under rules 8 record what they recorded before.
Real database, the reducer and its activities in-process; remote work is leased and reported as a worker would."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import machine, progress, remote
from shared.engine import steps as store
from shared.engine.steps import StepSeed
from tests.integration.test_sweeper_stuck_compensation import (
    _ACTIVITIES,
    ACTION,
    PLAN,
    _execution,
    _execution_now,
    _lease,
    _report,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

UNDONE_BY_ID: list[dict[str, Any]] = [
    # a's output has no `id`, which its compensation reads: given up.
    {"id": "a", "action": ACTION, "depends_on": [], "compensate": {"action": "rollback", "id": "${steps.a.output.id}"}},
    {"id": "b", "action": ACTION, "depends_on": ["a"]},
]
TIMED_OUT: list[dict[str, Any]] = [
    {"id": "k", "action": ACTION, "depends_on": [], "retry": {"max_attempts": 3, "initial_interval_s": 100}},
    {"id": "a", "action": ACTION, "depends_on": []},
]
GIVEN_UP = "compensation parameters could not be resolved"


class Run:
    """The orchestrator in-process: each activity runs for real as it is called; events and timers as the test
    gives them. Keeps every dispatch it ran, to run one again as a re-executed activity would."""

    def __init__(self, tenant_id: uuid.UUID, execution_id: uuid.UUID, steps: list[dict[str, Any]], rules: int) -> None:
        self.now = datetime.now(UTC)
        self.dispatches: list[machine.DispatchSteps] = []
        self.result: dict[str, Any] | None = None
        start = {
            "execution_id": str(execution_id),
            "tenant_id": str(tenant_id),
            "definition": {"steps": steps},
            "plan": {step["id"]: {**PLAN, "timeout_s": 60} for step in steps},
            "rules": rules,
        }
        self.state, commands = machine.begin(start, self.now)
        self._run(commands)

    def raise_event(self, name: str, data: Any) -> None:
        self._run(self._reduce(machine.EventRaised(name, data, self.now)))

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self._run(self._reduce(machine.TimerFired(self.now)))

    def _reduce(self, event: machine.Event) -> list[machine.Command]:
        self.state, commands = machine.reduce(self.state, event)
        return commands

    def _run(self, commands: list[machine.Command]) -> None:
        queue = list(commands)
        while queue:
            command = queue.pop(0)
            if isinstance(command, machine.CallActivity):
                if isinstance(command.input, machine.DispatchSteps):
                    self.dispatches.append(command.input)
                done = machine.ActivityDone(command.id, _ACTIVITIES[command.name](command.input), self.now)
                queue.extend(self._reduce(done))
            elif isinstance(command, machine.Complete):
                self.result = command.result
            else:
                assert isinstance(command, machine.WaitForEvent | machine.SetTimer), command


def _read(pool: ConnectionPool[Any], tenant: uuid.UUID, execution_id: uuid.UUID, step_id: str) -> dict[str, Any]:
    """The step's row, its stream events, its domain events (outbox), and the execution's stream."""
    with tenant_transaction(tenant, pool=pool) as conn:
        (step,) = [row for row in store.list_steps(conn, execution_id) if row["step_id"] == step_id]
        stream = repo.events_after(conn, execution_id, 0, 1000)
        outbox = conn.execute(
            "SELECT event_type FROM app.outbox WHERE subject = %s ORDER BY position",
            (f"executions/{execution_id}/steps/{step_id}",),
        ).fetchall()
    return {
        "step": step,
        "events": [(e.type, e.data) for e in stream if e.step_id == step_id],
        "stream": [(e.type, e.step_id) for e in stream],
        "domain": [row["event_type"] for row in outbox],
    }


def _given_up(pool: ConnectionPool[Any], tenant: uuid.UUID, rules: int) -> tuple[Run, uuid.UUID]:
    """a succeeds with an output lacking `id`, b fails for good: a's compensation cannot resolve."""
    execution = _execution(pool, tenant)
    with tenant_transaction(tenant, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("a", ACTION, 1), StepSeed("b", ACTION, 1)])
    run = Run(tenant, execution.id, UNDONE_BY_ID, rules)
    run.raise_event(*_report(execution.id, _lease(tenant), "a", remote.RemoteResult(ok=True, output={"other": 1})))
    failure = remote.RemoteResult(ok=False, error="registry refused the image", retryable=False)
    run.raise_event(*_report(execution.id, _lease(tenant), "b", failure))
    return run, execution.id


def test_a_compensation_given_up_is_recorded_on_its_step_before_the_run_ends(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    run, execution_id = _given_up(app_pool, tenant, rules=9)
    assert run.result is not None and run.result["status"] == "failed"
    read = _read(app_pool, tenant, execution_id, "a")
    step = read["step"]
    assert step["state"] == "compensation_failed" and step["finished_at"] is not None
    assert step["error"].startswith(GIVEN_UP) and step["error"] == run.result["compensation_failed"]["a"]
    ended = [data for kind, data in read["events"] if kind == "compensation_failed"]
    assert ended == [{"attempt": 1, "error": step["error"], "reason": "abandoned"}]
    assert read["domain"] == ["step.completed", "step.compensation_failed"]
    # Recorded before the run's end: nothing is written to an ended execution.
    assert read["stream"].index(("compensation_failed", "a")) < read["stream"].index(("execution_failed", None))
    assert _execution_now(app_pool, tenant, execution_id).status == "failed"

    # The dispatch that recorded it, run again (a re-executed activity), records nothing more.
    (recorder,) = [d for d in run.dispatches if any(n.kind is machine.NoteKind.COMPENSATION_FAILED for n in d.notes)]
    assert progress.dispatch_steps(recorder).refused
    assert _read(app_pool, tenant, execution_id, "a") == read


def test_a_compensation_given_up_once_the_step_was_compensating_is_recorded_once(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """A retry's compensation given up finds its step compensating (its earlier attempt failed): it ends from there;
    the note run twice records once."""
    tenant = new_tenant()
    execution = _execution(app_pool, tenant, path=["running", "compensating"])
    key = store.AttemptKey(execution.id, "a", "compensate", 1)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("a", ACTION, 2)])
        run_key = store.AttemptKey(execution.id, "a", "run", 1)
        store.begin_attempt(conn, run_key, action=ACTION, remote=False)
        store.finish_attempt(conn, run_key, ok=True, output={})
        store.begin_attempt(conn, key, action="rollback", remote=False)
        store.finish_attempt(conn, key, ok=False, error="HTTP 503")  # another attempt due: still compensating
    note = machine.StepNote(kind=machine.NoteKind.COMPENSATION_FAILED, step_id="a", attempt=2, error="unresolved")
    batch = machine.DispatchSteps(execution_id=str(execution.id), tenant_id=str(tenant), notes=[note])
    for _ in range(2):
        progress.dispatch_steps(batch)
    read = _read(app_pool, tenant, execution.id, "a")
    assert (read["step"]["state"], read["step"]["error"]) == ("compensation_failed", "unresolved")
    assert [data for kind, data in read["events"] if kind == "compensation_failed"] == [
        {"attempt": 2, "error": "unresolved", "reason": "abandoned"}
    ]
    assert read["domain"] == ["step.completed", "step.compensation_failed"]


def test_under_rules_8_the_compensation_given_up_is_recorded_nowhere(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """What rules 8 records, kept for the runs started under it: the step reads succeeded, no event names it."""
    tenant = new_tenant()
    run, execution_id = _given_up(app_pool, tenant, rules=8)
    assert run.result is not None and GIVEN_UP in run.result["compensation_failed"]["a"]
    read = _read(app_pool, tenant, execution_id, "a")
    assert read["step"]["state"] == "succeeded" and "compensation_failed" not in [t for t, _ in read["events"]]
    assert read["domain"] == ["step.completed"]


def _both_time_out(pool: ConnectionPool[Any], tenant: uuid.UUID, rules: int) -> tuple[Run, uuid.UUID]:
    """k (which may retry) and a (which may not) time out together: one record_outcomes answers k's timeout, then
    a's, which stops the run."""
    execution = _execution(pool, tenant)
    with tenant_transaction(tenant, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("k", ACTION, 3), StepSeed("a", ACTION, 1)])
    run = Run(tenant, execution.id, TIMED_OUT, rules)
    run.tick(61)
    return run, execution.id


def test_a_retry_decided_as_the_run_stops_is_never_recorded(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    run, execution_id = _both_time_out(app_pool, tenant, rules=9)
    assert run.result is not None and (run.result["status"], run.result["failed_step"]) == ("failed", "a")
    read = _read(app_pool, tenant, execution_id, "k")
    assert [kind for kind, _ in read["events"]] == ["step_started", "step_failed", "step_cancelled"]
    assert read["step"]["state"] == "cancelled" and read["step"]["retry_at"] is None
    notes = [(n.kind, n.step_id) for d in run.dispatches for n in d.notes]
    assert notes == [(machine.NoteKind.ABANDONED, "k")]


def test_under_rules_8_that_retry_is_recorded_then_cancelled(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    run, execution_id = _both_time_out(app_pool, tenant, rules=8)
    assert run.result is not None and run.result["status"] == "failed"
    read = _read(app_pool, tenant, execution_id, "k")
    assert [kind for kind, _ in read["events"]] == ["step_started", "step_failed", "step_retrying", "step_cancelled"]
