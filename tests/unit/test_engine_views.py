# intent_ref: platform.execution
"""The plain-language wait reason and the step views of GET /api/v1/executions/{id}: the wait reason of a leased
remote step tells a lease from a sign of life (a worker that has not beaten yet is "no heartbeat yet", never a
heartbeat dated at the lease)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.engine.executions import Execution
from shared.engine.steps import Attempt, AttemptKey
from shared.engine.views import step_views, wait_reason
from shared.engine.work_queue import QueuedItem

NOW = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
EXECUTION = Execution(
    id=uuid.uuid4(),
    intent_id=uuid.uuid4(),
    intent_version=1,
    target="staging",
    status="running",
    input={},
    output=None,
    error=None,
    requested_by="x",
    idempotency_key=None,
    plan_hash=None,
    last_event_seq=3,
    created_at=NOW,
    updated_at=NOW,
    finished_at=None,
)


def step(step_id: str, action: str, state: str, **extra: Any) -> dict[str, Any]:
    return {
        "step_id": step_id,
        "action": action,
        "state": state,
        "attempt": 1,
        "max_attempts": 3,
        "retry_at": None,
        **extra,
    }


def test_waiting_for_an_approval_and_a_worker() -> None:
    steps = [step("deploy", "approval", "waiting"), step("build", "build-container", "waiting")]
    assert wait_reason(replace(EXECUTION, status="waiting"), steps, NOW) == (
        "waiting for approval of step deploy; waiting for a worker to complete step build"
    )


def test_retrying_counts_down_to_the_next_attempt() -> None:
    steps = [step("build", "http.request", "retrying", retry_at=NOW + timedelta(seconds=7.2))]
    assert wait_reason(EXECUTION, steps, NOW) == "retrying step build in 8 s (attempt 2 of 3)"


def test_no_reason_when_moving_or_finished() -> None:
    running = [step("build", "http.request", "running")]
    assert wait_reason(EXECUTION, running, NOW) is None
    assert wait_reason(replace(EXECUTION, status="succeeded"), [step("a", "approval", "waiting")], NOW) is None
    assert wait_reason(replace(EXECUTION, status="pending"), [], NOW) == "waiting for the orchestration to start"


def test_a_requested_cancel_comes_first() -> None:
    cancelling = replace(EXECUTION, cancel_requested_at=NOW)
    assert wait_reason(cancelling, [step("build", "http.request", "running")], NOW) == (
        "cancelling: waiting for work already started to end"
    )


LEASED = QueuedItem(
    id=uuid.uuid4(),
    key=AttemptKey(EXECUTION.id, "build", "run", 1),
    action="build-container",
    params={},
    enqueued_at=NOW - timedelta(seconds=9),
    deadline=NOW + timedelta(minutes=30),
    lease_id=uuid.uuid4(),
    leased_by="builder-1 (app)",
    leased_at=NOW - timedelta(seconds=5),
    lease_expires_at=NOW + timedelta(seconds=55),
    heartbeat_at=None,
    progress=None,
)


def test_a_lease_without_a_heartbeat_says_so() -> None:
    # The worker may have gone away as its poll was answered: the lease is no sign of life.
    steps = [step("build", "build-container", "waiting")]
    assert wait_reason(replace(EXECUTION, status="waiting"), steps, NOW, [LEASED]) == (
        "a worker has leased build-container (step build): leased by builder-1 (app) 5 s ago, no heartbeat yet"
    )


def test_a_heartbeat_is_dated_from_the_heartbeat() -> None:
    beaten = replace(LEASED, heartbeat_at=NOW - timedelta(seconds=2), progress={"percent": 40, "message": "layer 2"})
    steps = [step("build", "build-container", "waiting")]
    assert wait_reason(replace(EXECUTION, status="waiting"), steps, NOW, [beaten]) == (
        "a worker is running build-container (step build) (40 %, layer 2): leased by builder-1 (app) 5 s ago, "
        "last heartbeat 2 s ago"
    )


def test_steps_carry_their_attempts_in_order() -> None:
    key = AttemptKey(EXECUTION.id, "build", "run", 1)
    attempts = [
        Attempt(
            key=key,
            action="http.request",
            remote=False,
            state="failed",
            output=None,
            error="500",
            retryable=True,
            token_nonce=None,
            token_expires_at=None,
            token_used_at=None,
            dispatched_at=NOW,
            finished_at=NOW,
        ),
        Attempt(
            key=replace(key, attempt=2),
            action="http.request",
            remote=False,
            state="succeeded",
            output={"status": 200},
            error=None,
            retryable=None,
            token_nonce=None,
            token_expires_at=None,
            token_used_at=None,
            dispatched_at=NOW,
            finished_at=NOW,
        ),
    ]
    views = step_views([step("build", "http.request", "succeeded"), step("next", "wait", "pending")], attempts)
    assert [(a["attempt"], a["state"]) for a in views[0]["attempts"]] == [(1, "failed"), (2, "succeeded")]
    assert views[1]["attempts"] == []


def test_a_compensation_between_attempts_says_when_it_is_retried() -> None:
    failed = Attempt(
        key=AttemptKey(EXECUTION.id, "deploy", "compensate", 1),
        action="http.request",
        remote=False,
        state="failed",
        output=None,
        error="500",
        retryable=True,
        token_nonce=None,
        token_expires_at=None,
        token_used_at=None,
        dispatched_at=NOW,
        finished_at=NOW,
    )
    compensating = replace(EXECUTION, status="compensating")
    steps = [step("deploy", "http.request", "compensating", retry_at=NOW + timedelta(seconds=4.5))]
    assert wait_reason(compensating, steps, NOW, attempts=[failed]) == (
        "retrying the compensation of step deploy in 5 s (attempt 2 of 3)"
    )
    # A compensation attempt under way has no retry time: it is moving.
    assert wait_reason(compensating, [step("deploy", "http.request", "compensating")], NOW, attempts=[failed]) is None
