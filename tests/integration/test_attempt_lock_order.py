# intent_ref: platform.execution
"""Recorders of one attempt's result take its row before the execution's, so two of them meeting never deadlock."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import retried_on_deadlock, tenant_transaction
from shared.engine import control, progress, sweeper, worker
from shared.engine import executions as repo
from shared.engine import machine_types as mt
from shared.engine import steps as store
from tests.integration.test_approval_approvers import _asked
from tests.integration.test_outcome_lock_order import _Hold, _race_held, _started

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

FIRST = "first"


def _race(pg: Any, pause: _Hold, first: Callable[[], Any], second: Callable[[], Any]) -> dict[str, Any]:
    """Run `first` until it holds its lock, then `second` until it waits for `first`, then let both finish."""
    answers = _race_held(pg, pause, (FIRST, first), ("second", second))
    assert not [answer for answer in answers.values() if isinstance(answer, BaseException)], answers
    return answers


def _timeout(tenant: uuid.UUID, execution_id: uuid.UUID, step_id: str) -> mt.RecordOutcomes:
    outcome = mt.Outcome(step_id=step_id, phase="run", attempt=1, ok=False, error="timed out", state="timed_out")
    return mt.RecordOutcomes(execution_id=str(execution_id), tenant_id=str(tenant), outcomes=[outcome])


def _decide(tenant: uuid.UUID, pool: ConnectionPool[Any], execution_id: uuid.UUID) -> str:
    """An approval of `gate` in its own transaction: `applied` or `repeated`."""
    with tenant_transaction(tenant, pool=pool) as conn:
        outcome = control.decide_approval(
            conn, execution_id, "gate", "approve", principal_id="tid/a", object_id="a", comment=""
        )
    return "applied" if outcome.applied else "repeated"


def _decided(tenant: uuid.UUID, pool: ConnectionPool[Any], execution_id: uuid.UUID) -> str:
    """A decision as the approve route makes it: decided again when it was a deadlock's victim; `not-waiting` for
    its 409."""
    try:
        return retried_on_deadlock(lambda: _decide(tenant, pool, execution_id))
    except control.NotWaitingError:
        return "not-waiting"


@pytest.fixture
def tenant(new_tenant: Callable[[], uuid.UUID]) -> Iterator[uuid.UUID]:
    yield new_tenant()


def test_a_modules_result_and_its_steps_timeout(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, item = _started(app_pool, tenant)
    # The worker has moved the attempt (its row held) and has its event, which takes the execution's, still to write.
    pause = _Hold(monkeypatch, FIRST, (store, "append_event"), before=True)
    answers = _race(
        pg,
        pause,
        lambda: worker._record(item, key, {"ok": True, "output": {"n": 1}}),
        lambda: progress.record_outcomes(_timeout(tenant, key.execution_id, "work")),
    )
    assert answers["second"] == [{"ok": True, "output": {"n": 1}}]  # the result recorded first stands


def test_an_approvals_decision_and_its_timeout(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})

    # Between the decision's two locks, whichever order it takes them in: the execution is read after the attempt.
    pause = _Hold(monkeypatch, FIRST, (repo, "get_execution"), (repo, "hold_execution"))
    answers = _race(
        pg,
        pause,
        lambda: _decide(tenant, app_pool, execution_id),
        lambda: progress.record_outcomes(_timeout(tenant, execution_id, "gate")),
    )
    assert answers[FIRST] == "applied"
    assert [verdict["ok"] for verdict in answers["second"]] == [True]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        events = [event.type for event in repo.events_after(conn, execution_id, 0, 1000)]
    assert events.count("approval_granted") == 1 and "step_failed" not in events


def test_an_approvals_decision_and_a_first_generation_timeout(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ADR 0025 keeps the first generation for executions in flight: its timeout settles through record_progress.
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})

    settle = {
        "kind": "settle",
        "execution_id": str(execution_id),
        "tenant_id": str(tenant),
        "step_id": "gate",
        "phase": "run",
        "attempt": 1,
        "ok": False,
        "state": "timed_out",
        "error": "timed out",
    }
    pause = _Hold(monkeypatch, FIRST, (repo, "get_execution"), (repo, "hold_execution"))
    answers = _race(
        pg, pause, lambda: _decide(tenant, app_pool, execution_id), lambda: progress.record_progress(settle)
    )
    assert answers[FIRST] == "applied"
    assert answers["second"]["ok"] is True  # the decision recorded first stands


def test_a_decision_meeting_the_sweepers_end_is_answered_as_late(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweeper's end holds the execution and is about to abandon the approval's attempt, which the decision holds:
    # one of them is a deadlock's victim, and the request must not answer 503 for it.
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    pause = _Hold(monkeypatch, FIRST, (sweeper.store, "list_steps"))
    answers = _race(
        pg,
        pause,
        lambda: sweeper.end_execution(tenant, execution_id, "stalled", pool=app_pool),
        lambda: _decided(tenant, app_pool, execution_id),
    )
    assert answers["second"] == "not-waiting"


def test_a_decision_meeting_a_cancels_abandoned_note_is_answered_as_late(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    note = mt.StepNote(kind="abandoned", step_id="gate", attempt=1, error="cancelled")
    batch = mt.DispatchSteps(execution_id=str(execution_id), tenant_id=str(tenant), notes=[note])
    # The dispatch holds the execution, as a cancel does.
    pause = _Hold(monkeypatch, FIRST, (progress, "_note"), before=True)
    answers = _race(pg, pause, lambda: progress.dispatch_steps(batch), lambda: _decided(tenant, app_pool, execution_id))
    assert answers["second"] == "not-waiting"
