# intent_ref: platform.execution
"""A cancel's answer says how the run ends (ADR 0014): once a step's final failure is recorded, even before the run
records `compensating`, the cancel is refused (409 already-failing) and the run ends failed; a failure with a retry
left is still cancelled."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, machine, progress, work_queue
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT
from shared.engine.steps import StepSeed
from tests.integration.cancel_race_harness import (
    ACTION,
    Orchestration,
    end_of_run,
    fail_by_remote,
    lease,
    seeded_execution,
)
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


def _cancel(tenant_id: uuid.UUID, execution_id: uuid.UUID) -> tuple[str, list[store.Attempt]]:
    """What the cancel route records in its transaction: its answer, and the queued work it ended."""
    with tenant_transaction(tenant_id) as conn:
        try:
            control.request_cancel(conn, execution_id, "alice")
        except control.AlreadyFailingError:
            return "already-failing", []
        return "accepted", work_queue.cancel_queued(conn, execution_id)


def _cancel_after_a_failure(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, max_attempts: int, retryable: bool
) -> tuple[str, str, list[str]]:
    """A running execution whose one remote step fails; a cancel comes after the failure is recorded and before the
    orchestration has applied it (so before `compensating`). Answers the cancel's answer, the end, the events."""
    execution = seeded_execution(pool, tenant_id, max_attempts=max_attempts)
    step: dict[str, Any] = {"id": "build", "action": ACTION, "image": "x:1"}
    if max_attempts > 1:
        step["retry"] = {"max_attempts": max_attempts, "initial_interval_s": 60, "backoff": 1}
    run = Orchestration(tenant_id, execution.id, step)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        assert repo.get_execution(conn, execution.id).status == "waiting"  # the remote work is out

    # The remote worker leases the step's work and reports it failed.
    name, verdict = fail_by_remote(execution.id, lease(tenant_id), retryable)
    answer, dequeued = _cancel(tenant_id, execution.id)
    # The recorder raised its verdict once its result committed, before the cancel's transaction even began; a cancel
    # answered 202 is raised after it, with the verdicts of the queued work it ended.
    run.raise_event(name, verdict)
    if answer == "accepted":
        run.raise_event(CANCEL_EVENT, {"by": "alice"})
        for attempt in dequeued:
            run.raise_event(attempt.key.event_name, attempt.verdict())
    execution, events = end_of_run(pool, tenant_id, run, execution.id)
    return answer, execution.status, events


@pytest.mark.parametrize(
    ("max_attempts", "retryable"), [(1, True), (2, False)], ids=["its-last-attempt", "not-retryable"]
)
def test_a_cancel_after_a_steps_final_failure_is_refused_before_the_run_compensates_and_the_run_ends_failed(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], max_attempts: int, retryable: bool
) -> None:
    """Before: answered 202 ("ends cancelled"), and the run ended failed (the reducer keeps the failure as its
    cause)."""
    answer, end, events = _cancel_after_a_failure(app_pool, new_tenant(), max_attempts, retryable)
    assert (answer, end) == ("already-failing", "failed")
    assert "cancel_requested" not in events  # nothing of the refused cancel is recorded


def test_a_cancel_after_a_failure_with_a_retry_left_is_accepted_and_the_run_ends_cancelled(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """The failure is not final (the reducer would retry it): the cancel ends the retry's pause, the run cancelled."""
    answer, end, events = _cancel_after_a_failure(app_pool, new_tenant(), max_attempts=2, retryable=True)
    assert (answer, end) == ("accepted", "cancelled")
    assert events.count("cancel_requested") == 1


# ------------------------------------------------------------- the orphaned child of a failed dispatch, held once
def _orphan(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, child_failed: bool
) -> tuple[uuid.UUID, repo.Execution, list[repo.ExecutionEvent]]:
    """A parent whose `intent.run` dispatch failed for good after its running child had started (its attempt
    settled failed through record_outcomes): answers the parent's id, the child afterwards and its events."""
    parent = _execution(pool, tenant_id, path=["running"])
    key = store.AttemptKey(parent.id, "kid", "run", 1)
    child = _execution(pool, tenant_id, path=["running"], key=f"child:{parent.id}:kid:1")
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, parent.id, [StepSeed("kid", "intent.run", 1)])
        store.begin_attempt(conn, key, action="intent.run", remote=False)
        store.seed_steps(conn, child.id, [StepSeed("build", ACTION, 1)])
        if child_failed:
            child_key = store.AttemptKey(child.id, "build", "run", 1)
            store.begin_attempt(conn, child_key, action=ACTION, remote=True)
            store.finish_attempt(conn, child_key, ok=False, error="boom", retryable=False)
    outcome = machine.Outcome(
        step_id="kid", phase=machine.Phase.RUN, attempt=1, ok=False, state="failed", error="lost", action="intent.run"
    )
    (verdict,) = progress.record_outcomes(
        machine.RecordOutcomes(execution_id=str(parent.id), tenant_id=str(tenant_id), outcomes=[outcome])
    )
    assert verdict["ok"] is False
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return parent.id, repo.get_execution(conn, child.id), repo.events_after(conn, child.id, 0, 100)


def test_a_running_orphaned_child_is_told_to_cancel(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    parent_id, child, events = _orphan(app_pool, new_tenant(), child_failed=False)
    assert child.status == "running" and child.cancel_requested_at is not None
    cancels = [event.data for event in events if event.type == "cancel_requested"]
    assert cancels == [{"by": control.parent_principal(parent_id)}]


def test_an_orphaned_child_a_failure_ends_is_left_to_end_failed(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    _, child, events = _orphan(app_pool, new_tenant(), child_failed=True)
    assert child.status == "running" and child.cancel_requested_at is None
    assert "cancel_requested" not in [event.type for event in events]


def test_a_retry_whose_parameters_fail_reads_failed_and_a_cancel_after_it_is_refused(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # The reducer fails a retry before it begins when its parameters do not fit the dispatch's bound: the step read
    # `retrying` at its first attempt for ever, no step_failed was recorded, and a cancel after it was taken (202)
    # while the run ended failed.
    tenant_id = new_tenant()
    execution = _execution(app_pool, tenant_id, path=["running"])
    key = store.AttemptKey(execution.id, "a", "run", 1)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("a", ACTION, 2)])
        store.begin_attempt(conn, key, action=ACTION, remote=False)
        store.finish_attempt(conn, key, ok=False, error="flaky", retryable=True)
        retrying = machine.StepNote(
            kind=machine.NoteKind.RETRYING,
            step_id="a",
            attempt=1,
            next_attempt=2,
            max_attempts=2,
            retry_at=datetime.now(UTC).isoformat(),
            error="flaky",
        )
        progress._note(conn, execution.id, retrying)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        failed = machine.StepNote(kind=machine.NoteKind.FAILED, step_id="a", attempt=2, error="too big together")
        progress._note(conn, execution.id, failed)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        assert [(s["state"], s["attempt"]) for s in store.list_steps(conn, execution.id)] == [("failed", 2)]
        assert [e.data for e in repo.events_after(conn, execution.id, 0, 100) if e.type == "step_failed"][-1] == {
            "attempt": 2,
            "error": "too big together",
        }
    assert _cancel(tenant_id, execution.id)[0] == "already-failing"
