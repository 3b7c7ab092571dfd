# intent_ref: platform.execution
"""What a client reads of a step's end is what happened, once (ADR 0014, ADR 0015): a step a cancel or an end
abandons ends cancelled with one event and was never recorded failed; a compensation with another attempt due reads
compensating, its retry recorded, and compensation_failed only once none is left; a child its stopping parent
cancelled ends its step cancelled; a cancel is refused, nothing written, while a failure is being compensated."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, progress, sweeper, work_queue
from shared.engine import executions as repo
from shared.engine import machine_types as mt
from shared.engine import steps as store
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.test_approval_approvers import _asked
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

_ENDS = ("step_failed", "step_cancelled", "step_completed", "compensation_failed", "compensation_completed")


def _read(pool: ConnectionPool[Any], tenant: uuid.UUID, execution_id: uuid.UUID, step_id: str) -> dict[str, Any]:
    """The step's row, its stream events and its domain events (outbox)."""
    with tenant_transaction(tenant, pool=pool) as conn:
        (step,) = [row for row in store.list_steps(conn, execution_id) if row["step_id"] == step_id]
        events = [(e.type, e.data) for e in repo.events_after(conn, execution_id, 0, 1000) if e.step_id == step_id]
        outbox = conn.execute(
            "SELECT event_type FROM app.outbox WHERE subject = %s ORDER BY position",
            (f"executions/{execution_id}/steps/{step_id}",),
        ).fetchall()
    return {"step": step, "events": events, "domain": [row["event_type"] for row in outbox]}


# ------------------------------------------------------------------------------------ 1. an abandoned step ends once
def _approval_abandoned_by_a_note(pool: ConnectionPool[Any], tenant: uuid.UUID) -> tuple[AttemptKey, str]:
    """A stopping run's dispatch ends the waiting approval `gate` (abandon_waits' note)."""
    execution_id = _asked(pool, tenant, {})
    note = mt.StepNote(kind="abandoned", step_id="gate", attempt=1, error="cancelled")
    progress.dispatch_steps(mt.DispatchSteps(execution_id=str(execution_id), tenant_id=str(tenant), notes=[note]))
    return AttemptKey(execution_id, "gate", "run", 1), "cancelled"


def _queued_remote_cancelled(pool: ConnectionPool[Any], tenant: uuid.UUID) -> tuple[AttemptKey, str]:
    """The cancel route's transaction ends remote work no worker has taken."""
    key = _queued(pool, tenant, f"tr-{uuid.uuid4().hex[:6]}", path=["running", "waiting"])
    with tenant_transaction(tenant, pool=pool) as conn:
        control.request_cancel(conn, key.execution_id, "alice")
        work_queue.cancel_queued(conn, key.execution_id)
    return key, work_queue.CANCELLED_QUEUED


def _leased_remote_cancelled(pool: ConnectionPool[Any], tenant: uuid.UUID) -> tuple[AttemptKey, str]:
    """A worker's heartbeat on a leased item of an execution being cancelled ends the item's attempt."""
    action = f"tr-{uuid.uuid4().hex[:6]}"
    key = _queued(pool, tenant, action, path=["running", "waiting"])
    with tenant_transaction(tenant, pool=pool) as conn:
        (lease,) = work_queue.lease(conn, tenant, actions=[action], max_items=1, lease_s=60, worker="w").leases
    with tenant_transaction(tenant, pool=pool) as conn:
        control.request_cancel(conn, key.execution_id, "alice")
    with tenant_transaction(tenant, pool=pool) as conn:
        assert lease.item.lease_id is not None
        beat = work_queue.heartbeat(conn, lease.item.id, lease.item.lease_id, extend_s=60, progress=None)
    assert beat.cancelled is not None
    return key, work_queue.CANCELLED_LEASED


def _running_step_swept(pool: ConnectionPool[Any], tenant: uuid.UUID) -> tuple[AttemptKey, str]:
    """The sweeper ends an execution whose orchestration is gone, and the step it left running."""
    execution = _execution(pool, tenant, path=["running"])
    key = AttemptKey(execution.id, "build", "run", 1)
    with tenant_transaction(tenant, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", "http.request", 1)])
        store.begin_attempt(conn, key, action="http.request", remote=False)
    assert sweeper.end_execution(tenant, execution.id, "orchestration was terminated", pool=pool) is not None
    return key, "orchestration was terminated"


@pytest.mark.parametrize(
    "abandon",
    [_approval_abandoned_by_a_note, _queued_remote_cancelled, _leased_remote_cancelled, _running_step_swept],
    ids=["note", "queued", "heartbeat", "sweeper"],
)
def test_an_abandoned_step_ends_once_as_cancelled_and_is_never_recorded_failed(
    app_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    abandon: Callable[[ConnectionPool[Any], uuid.UUID], tuple[AttemptKey, str]],
) -> None:
    tenant = new_tenant()
    key, reason = abandon(app_pool, tenant)
    read = _read(app_pool, tenant, key.execution_id, key.step_id)
    # One end on the stream: step_cancelled. Before, step_failed {"error": reason, "reason": "abandoned"} came first.
    assert [(t, d) for t, d in read["events"] if t in _ENDS] == [("step_cancelled", {"reason": reason})]
    assert (read["step"]["state"], read["step"]["error"]) == ("cancelled", reason)
    assert read["step"]["finished_at"] is not None
    assert read["domain"] == ["step.cancelled"]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        attempt = store.get_attempt(conn, key)
    assert attempt is not None and (attempt.state, attempt.error) == ("abandoned", reason)


def test_an_abandoned_attempt_records_nothing_of_its_step(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """The attempt alone: no step moved to failed and no event, whoever moves the step afterwards."""
    tenant = new_tenant()
    execution_id = _asked(app_pool, tenant, {})
    key = AttemptKey(execution_id, "gate", "run", 1)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        attempt, applied = store.finish_attempt(conn, key, ok=False, error="cancelled", state="abandoned")
        again, applied_again = store.finish_attempt(conn, key, ok=False, error="cancelled", state="abandoned")
    assert applied and attempt.state == "abandoned" and not applied_again and again.state == "abandoned"
    read = _read(app_pool, tenant, execution_id, "gate")
    assert read["step"]["state"] == "waiting" and read["step"]["finished_at"] is None
    assert [t for t, _ in read["events"]] == ["step_started", "approval_requested"] and read["domain"] == []


# ------------------------------------------------------------------------ 2. a compensation that will be retried
def _compensating(pool: ConnectionPool[Any], tenant: uuid.UUID, max_attempts: int = 2) -> AttemptKey:
    """Step `deploy` succeeded and its compensation's first attempt is out, in a failed run compensating."""
    execution = _execution(pool, tenant, path=["running"])
    run, undo = AttemptKey(execution.id, "deploy", "run", 1), AttemptKey(execution.id, "deploy", "compensate", 1)
    with tenant_transaction(tenant, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("deploy", "http.request", max_attempts)])
        store.begin_attempt(conn, run, action="http.request", remote=False)
        store.finish_attempt(conn, run, ok=True, output={"id": 1})
        repo.transition(conn, execution.id, "compensating", error="verify failed")
        store.begin_attempt(conn, undo, action="http.request", remote=False)
    return undo


def _fail(pool: ConnectionPool[Any], tenant: uuid.UUID, key: AttemptKey, error: str) -> None:
    with tenant_transaction(tenant, pool=pool) as conn:
        _, applied = store.finish_attempt(conn, key, ok=False, error=error)
    assert applied


def _retry_note(tenant: uuid.UUID, key: AttemptKey, retry_at: datetime) -> mt.DispatchSteps:
    note = mt.StepNote(
        kind="compensation_retrying",
        step_id=key.step_id,
        attempt=key.attempt,
        next_attempt=key.attempt + 1,
        max_attempts=2,
        retry_at=retry_at.isoformat(),
        error="HTTP 503",
    )
    return mt.DispatchSteps(execution_id=str(key.execution_id), tenant_id=str(tenant), notes=[note])


def test_a_compensation_with_an_attempt_left_reads_compensating_its_retry_recorded_and_fails_only_at_the_last(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    undo = _compensating(app_pool, tenant)
    _fail(app_pool, tenant, undo, "HTTP 503")
    during = _read(app_pool, tenant, undo.execution_id, "deploy")
    # Another attempt is due: not compensation_failed, not finished, nothing saying it failed for good.
    assert (during["step"]["state"], during["step"]["finished_at"]) == ("compensating", None)
    assert "compensation_failed" not in [t for t, _ in during["events"]]
    assert during["domain"] == ["step.completed"]

    # The orchestration's dispatch records the retry (twice, as a re-run activity would: once).
    retry_at = datetime.now(UTC) + timedelta(seconds=30)
    for _ in range(2):
        progress.dispatch_steps(_retry_note(tenant, undo, retry_at))
    paused = _read(app_pool, tenant, undo.execution_id, "deploy")
    retries = [d for t, d in paused["events"] if t == "compensation_retrying"]
    assert retries == [
        {
            "attempt": 1,
            "next_attempt": 2,
            "max_attempts": 2,
            "retry_at": retry_at.isoformat(),
            "error": "HTTP 503",
        }
    ]
    assert paused["step"]["state"] == "compensating" and paused["step"]["retry_at"] == retry_at

    second = AttemptKey(undo.execution_id, "deploy", "compensate", 2)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.begin_attempt(conn, second, action="http.request", remote=False)
    _fail(app_pool, tenant, second, "HTTP 500")
    ended = _read(app_pool, tenant, undo.execution_id, "deploy")
    assert (ended["step"]["state"], ended["step"]["error"]) == ("compensation_failed", "HTTP 500")
    assert ended["step"]["finished_at"] is not None and ended["step"]["retry_at"] is None
    assert [(t, d.get("attempt")) for t, d in ended["events"] if t == "compensation_failed"] == [
        ("compensation_failed", 2)
    ]
    assert ended["domain"] == ["step.completed", "step.compensation_failed"]


def test_a_compensations_only_attempt_failing_ends_it_at_once(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    undo = _compensating(app_pool, tenant, max_attempts=1)
    _fail(app_pool, tenant, undo, "HTTP 500")
    read = _read(app_pool, tenant, undo.execution_id, "deploy")
    assert read["step"]["state"] == "compensation_failed" and read["step"]["finished_at"] is not None
    assert [t for t, _ in read["events"]][-1] == "compensation_failed"
    assert read["domain"] == ["step.completed", "step.compensation_failed"]


def test_the_sweepers_end_ends_a_compensation_waiting_for_its_retry(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Between attempts nothing of it is out; left alone it would read compensating after the execution's end."""
    tenant = new_tenant()
    undo = _compensating(app_pool, tenant)
    _fail(app_pool, tenant, undo, "HTTP 503")
    assert sweeper.end_execution(tenant, undo.execution_id, "orchestration was terminated", pool=app_pool)
    read = _read(app_pool, tenant, undo.execution_id, "deploy")
    assert (read["step"]["state"], read["step"]["error"]) == ("compensation_failed", "orchestration was terminated")
    assert [t for t, _ in read["events"]][-1] == "compensation_failed"
    # Its subscribers hear of it once, as of a last attempt's failure (the first attempt's failure published nothing).
    assert read["domain"] == ["step.completed", "step.compensation_failed"]
    assert not sweeper.end_execution(tenant, undo.execution_id, "again", pool=app_pool)  # already ended
    assert _read(app_pool, tenant, undo.execution_id, "deploy")["domain"] == read["domain"]


# ------------------------------------------------------------ 3. a child its stopping parent cancelled ends cancelled
def _child_step(pool: ConnectionPool[Any], tenant: uuid.UUID) -> AttemptKey:
    """A cancelled parent whose intent.run step `kid` has its child running."""
    execution = _execution(pool, tenant, path=["running"])
    key = AttemptKey(execution.id, "kid", "run", 1)
    with tenant_transaction(tenant, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("kid", "intent.run", 1)])
        store.begin_attempt(conn, key, action="intent.run", remote=False)
        control.request_cancel(conn, execution.id, "alice")
    return key


def _child_cancelled(tenant: uuid.UUID, key: AttemptKey) -> list[dict[str, Any]]:
    """The outcome the reducer settles when the child it told to cancel ends cancelled (rules 5)."""
    outcome = mt.Outcome(step_id="kid", phase="run", attempt=1, ok=False, state="abandoned", error="cancelled")
    batch = mt.RecordOutcomes(execution_id=str(key.execution_id), tenant_id=str(tenant), outcomes=[outcome])
    return progress.record_outcomes(batch)


def test_a_child_cancelled_by_its_parents_cancel_ends_the_parents_step_cancelled(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    key = _child_step(app_pool, tenant)
    for _ in range(2):  # a re-run activity answers the same and records nothing more
        assert _child_cancelled(tenant, key) == [
            {"ok": False, "error": "cancelled", "retryable": False, "state": "abandoned"}
        ]
    read = _read(app_pool, tenant, key.execution_id, "kid")
    assert (read["step"]["state"], read["step"]["error"]) == ("cancelled", "cancelled")
    assert [(t, d) for t, d in read["events"] if t in _ENDS] == [("step_cancelled", {"reason": "cancelled"})]
    assert read["domain"] == ["step.cancelled"]  # no step.failed, and so no failure telemetry


def test_a_result_recorded_before_the_childs_end_stands(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """The step timed out first: that verdict is answered, and the step is not moved again."""
    tenant = new_tenant()
    key = _child_step(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.finish_attempt(conn, key, ok=False, error="step kid timed out after 5 s", state="timed_out")
    (verdict,) = _child_cancelled(tenant, key)
    assert verdict["state"] == "timed_out"
    read = _read(app_pool, tenant, key.execution_id, "kid")
    assert read["step"]["state"] == "failed"
    assert [t for t, _ in read["events"] if t in _ENDS] == ["step_failed"]


# ---------------------------------------------------------------- 4. no cancel while a failure is being compensated
def test_a_cancel_of_an_execution_compensating_for_a_failure_is_refused_and_writes_nothing(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        repo.transition(conn, execution.id, "compensating", error="step verify failed")
    with pytest.raises(control.AlreadyFailingError), tenant_transaction(tenant, pool=app_pool) as conn:
        control.request_cancel(conn, execution.id, "alice")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        # A parent passing its cancel down finds nothing to pass: the child ends failed on its own.
        assert control.record_child_cancel(conn, execution.id, uuid.uuid4()) is None
        after = repo.get_execution(conn, execution.id)
        events = [e.type for e in repo.events_after(conn, execution.id, 0, 100)]
    assert after.cancel_requested_at is None and "cancel_requested" not in events


def test_a_second_cancel_during_a_cancels_compensation_is_accepted(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        control.request_cancel(conn, execution.id, "alice")
        repo.transition(conn, execution.id, "compensating", error="cancelled")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        again = control.request_cancel(conn, execution.id, "bob")
        events = [e.type for e in repo.events_after(conn, execution.id, 0, 100)]
    assert again.status == "compensating" and again.cancel_requested_at is not None
    assert events.count("cancel_requested") == 1


def test_a_cancel_recorded_while_a_failure_was_stopping_the_run_is_refused_once_it_compensates(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """The failure came first (the reducer keeps it as the cause), so the run compensates for it and ends failed."""
    tenant = new_tenant()
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        control.request_cancel(conn, execution.id, "alice")
        repo.transition(conn, execution.id, "compensating", error="step verify failed")
    with pytest.raises(control.AlreadyFailingError), tenant_transaction(tenant, pool=app_pool) as conn:
        control.request_cancel(conn, execution.id, "bob")
