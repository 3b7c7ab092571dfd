# intent_ref: platform.execution
"""An approval decided just after a cancel ends its step once (ADR 0014), whichever reaches the run first."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT, approval_event
from shared.engine.steps import AttemptKey
from tests.integration.cancel_race_harness import Orchestration, cancel, end_of_run, seeded_execution
from tests.integration.test_approval_races import _until_blocked

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

_ENDS = ("step_failed", "step_cancelled", "step_completed")
_STEP = {"id": "gate", "action": "approval", "depends_on": []}
_PLAN = {"kind": "approval"}


def _waiting_approval(pool: ConnectionPool[Any], tenant_id: uuid.UUID) -> tuple[uuid.UUID, Orchestration]:
    """An execution whose run asked for its approval `gate` (recorded as its dispatch records it)."""
    execution = seeded_execution(pool, tenant_id, "gate", "approval")
    run = Orchestration(tenant_id, execution.id, _STEP, _PLAN)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        assert store.get_attempt(conn, AttemptKey(execution.id, "gate", "run", 1)) is not None
    return execution.id, run


def _decide(conn: repo.Conn, execution_id: uuid.UUID, decision: str) -> control.ApprovalOutcome:
    """The approval route's recording of a decision, in the caller's transaction."""
    return control.decide_approval(
        conn,
        execution_id,
        "gate",
        decision,  # type: ignore[arg-type]  # "approve" or "reject"
        principal_id="tid/approver",
        object_id="approver",
        comment="after the cancel",
    )


def _step_ends(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> dict[str, Any]:
    """The step's row, its attempt, its end events in the stream and its domain events (what a subscriber gets)."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        (step,) = [row for row in store.list_steps(conn, execution_id) if row["step_id"] == "gate"]
        attempt = store.get_attempt(conn, AttemptKey(execution_id, "gate", "run", 1))
        events = [e.type for e in repo.events_after(conn, execution_id, 0, 1000) if e.step_id == "gate"]
        domain = conn.execute(
            "SELECT event_type FROM app.outbox WHERE subject = %s ORDER BY position",
            (f"executions/{execution_id}/steps/gate",),
        ).fetchall()
    assert attempt is not None
    return {
        "step": step["state"],
        "attempt": attempt.state,
        "ends": [event for event in events if event in _ENDS],
        "domain": [row["event_type"] for row in domain],
    }


def _end(pool: ConnectionPool[Any], tenant_id: uuid.UUID, run: Orchestration, execution_id: uuid.UUID) -> list[str]:
    """The run's end, cancelled as the cancel's 202 said; answers the execution's event types."""
    ended, events = end_of_run(pool, tenant_id, run, execution_id)
    assert (ended.status, ended.error) == ("cancelled", "cancelled")
    assert events[-1] == "execution_cancelled" and "execution_failed" not in events
    return events


_ONE_END = {
    "reject": {"step": "failed", "attempt": "failed", "ends": ["step_failed"], "domain": ["step.failed"]},
}
"""A rejection recorded after the cancel is the step's one end, during the cancel (ADR 0014, rules 7). An approval
after the cancel is refused before anything is recorded (409 `not-waiting`, tests/integration/
test_control_review_fixes.py): it granted a step of a run that was ending cancelled."""


@pytest.mark.parametrize("decision", ["reject"])
def test_a_decision_committed_after_the_cancel_whose_event_reaches_the_run_first_ends_the_step_once(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], decision: str
) -> None:
    """Before: the cancel's end of the waits moved the rejected (failed) step on to cancelled: `step_failed` then
    `step_cancelled` in the stream, `step.failed` and `step.cancelled` both published for one step."""
    tenant_id = new_tenant()
    execution_id, run = _waiting_approval(app_pool, tenant_id)
    assert cancel(tenant_id, execution_id) == []  # 202
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        outcome = _decide(conn, execution_id, decision)
    assert outcome.applied
    run.raise_event(CANCEL_EVENT, {"by": "alice"})  # the cancel's event first: the run ends its waits
    run.raise_event(approval_event("gate", outcome.key.attempt), outcome.verdict)
    events = _end(app_pool, tenant_id, run, execution_id)
    assert _step_ends(app_pool, tenant_id, execution_id) == _ONE_END[decision]
    assert events.index("cancel_requested") < events.index(_ONE_END[decision]["ends"][0])


def test_a_rejection_holding_the_approval_while_the_cancel_ends_the_waits_ends_the_step_once(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """The rejection holds the approval's attempt when the run's dispatch comes to end it: the dispatch waits (the
    attempt before the execution, ADR 0014's one order), then finds the rejection committed and leaves its end."""
    tenant_id = new_tenant()
    execution_id, run = _waiting_approval(app_pool, tenant_id)
    assert cancel(tenant_id, execution_id) == []
    failures: list[BaseException] = []

    def deliver_cancel() -> None:
        try:
            run.raise_event(CANCEL_EVENT, {"by": "alice"})
        except BaseException as exc:  # reported below: an exception in a thread would otherwise pass unseen
            failures.append(exc)

    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        outcome = _decide(conn, execution_id, "reject")
        dispatcher = threading.Thread(target=deliver_cancel)
        dispatcher.start()
        _until_blocked(pg.admin_url, conn.info.backend_pid, 1)
    dispatcher.join(timeout=60)
    assert not dispatcher.is_alive() and failures == []
    run.raise_event(approval_event("gate", outcome.key.attempt), outcome.verdict)
    _end(app_pool, tenant_id, run, execution_id)
    assert _step_ends(app_pool, tenant_id, execution_id) == _ONE_END["reject"]


@pytest.mark.parametrize("decision", ["reject", "approve"])
def test_a_decision_after_the_cancel_ended_the_waits_is_refused_and_the_step_ends_cancelled_once(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], decision: str
) -> None:
    """The cancel's event reached the run, which ended the approval, before the decision: 409 `not-waiting`."""
    tenant_id = new_tenant()
    execution_id, run = _waiting_approval(app_pool, tenant_id)
    assert cancel(tenant_id, execution_id) == []
    run.raise_event(CANCEL_EVENT, {"by": "alice"})
    with pytest.raises(control.NotWaitingError), tenant_transaction(tenant_id, pool=app_pool) as conn:
        _decide(conn, execution_id, decision)
    _end(app_pool, tenant_id, run, execution_id)
    assert _step_ends(app_pool, tenant_id, execution_id) == {
        "step": "cancelled",
        "attempt": "abandoned",
        "ends": ["step_cancelled"],
        "domain": ["step.cancelled"],
    }


def test_a_rejection_committed_before_the_cancel_ends_the_run_failed_and_the_cancel_is_refused(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """The reverse order: the rejection is the step's final failure, so the cancel is 409 `already-failing`, nothing
    recorded, and the run ends failed (ADR 0014: a failure stays the cause)."""
    tenant_id = new_tenant()
    execution_id, run = _waiting_approval(app_pool, tenant_id)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        outcome = _decide(conn, execution_id, "reject")
    with pytest.raises(control.AlreadyFailingError):
        cancel(tenant_id, execution_id)
    run.raise_event(approval_event("gate", outcome.key.attempt), outcome.verdict)
    ended, events = end_of_run(app_pool, tenant_id, run, execution_id)
    assert ended.status == "failed" and "cancel_requested" not in events
    assert _step_ends(app_pool, tenant_id, execution_id) == _ONE_END["reject"]
