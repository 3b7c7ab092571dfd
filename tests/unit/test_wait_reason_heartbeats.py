# intent_ref: platform.execution
"""The wait reason of a leased remote step tells a lease from a sign of life: a worker that has not beaten yet (it
may have gone away as its poll was answered) is "no heartbeat yet", never a heartbeat dated at the lease."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.engine.executions import Execution
from shared.engine.steps import AttemptKey
from shared.engine.views import wait_reason
from shared.engine.work_queue import QueuedItem

NOW = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
EXECUTION = Execution(
    id=uuid.uuid4(),
    intent_id=uuid.uuid4(),
    intent_version=1,
    target="staging",
    status="waiting",
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
STEPS: list[dict[str, Any]] = [
    {"step_id": "build", "action": "build-container", "state": "waiting", "attempt": 1, "max_attempts": 3}
]
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
    assert wait_reason(EXECUTION, STEPS, NOW, [LEASED]) == (
        "a worker has leased build-container (step build): leased by builder-1 (app) 5 s ago, no heartbeat yet"
    )


def test_a_heartbeat_is_dated_from_the_heartbeat() -> None:
    beaten = replace(LEASED, heartbeat_at=NOW - timedelta(seconds=2), progress={"percent": 40, "message": "layer 2"})
    assert wait_reason(EXECUTION, STEPS, NOW, [beaten]) == (
        "a worker is running build-container (step build) (40 %, layer 2): leased by builder-1 (app) 5 s ago, "
        "last heartbeat 2 s ago"
    )
