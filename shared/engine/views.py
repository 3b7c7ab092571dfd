# intent_ref: platform.execution
"""How an execution reads to a person: each step with its attempts, and a plain-language reason it is waiting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.engine.executions import Execution
from shared.engine.steps import Attempt
from shared.engine.work_queue import Poller, QueuedItem
from shared.free_text import neutralised


def step_views(steps: Sequence[dict[str, Any]], attempts: Sequence[Attempt]) -> list[dict[str, Any]]:
    """The steps in definition order, each with its attempts (work and compensation) oldest first."""
    by_step: dict[str, list[dict[str, Any]]] = {}
    for attempt in attempts:
        by_step.setdefault(attempt.key.step_id, []).append(
            {
                "phase": attempt.key.phase,
                "attempt": attempt.key.attempt,
                "action": attempt.action,
                "remote": attempt.remote,
                "state": attempt.state,
                "output": attempt.output,
                "error": attempt.error,
                "started_at": attempt.dispatched_at,
                "finished_at": attempt.finished_at,
            }
        )
    return [{**step, "attempts": by_step.get(step["step_id"], [])} for step in steps]


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0, round(seconds))} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"


def _worker_reason(step_id: str, item: QueuedItem | None, pollers: dict[str, Poller], now: datetime) -> str:
    """Where a remote step's work is: queued (and whether any worker polls for its action) or with a worker."""
    if item is None:
        return f"waiting for a worker to complete step {step_id}"
    queued = _ago((now - item.enqueued_at).total_seconds())
    if item.status(now) == "queued":
        poller = pollers.get(item.action)
        polled = (
            "no worker has ever polled for it"
            if poller is None
            else f"no worker has polled in {_ago((now - poller.last_polled_at).total_seconds())}"
        )
        return f"waiting for a worker for {item.action} (step {step_id}): queued {queued}, {polled}"
    assert item.leased_at is not None  # leased or expired
    # Neutralised as shown: a name recorded before names were neutralised on the way in (ADR 0027) is shown too.
    worker = neutralised(item.leased_by) if item.leased_by is not None else None
    held = f"leased by {worker} {_ago((now - item.leased_at).total_seconds())} ago"
    if item.status(now) == "expired":
        return f"waiting for a worker for {item.action} (step {step_id}): {held}, its lease has expired"
    if item.heartbeat_at is None:  # progress comes with heartbeats only
        # The lease is no sign of life: a worker that went away as its poll was answered holds a lease it never saw.
        return f"a worker has leased {item.action} (step {step_id}): {held}, no heartbeat yet"
    progress = item.progress or {}
    detail = ", ".join(
        part
        for part in (
            f"{progress['percent']:g} %" if progress.get("percent") is not None else "",
            str(progress.get("message") or ""),
        )
        if part
    )
    shown = f" ({detail})" if detail else ""
    return (
        f"a worker is running {item.action} (step {step_id}){shown}: {held}, "
        f"last heartbeat {_ago((now - item.heartbeat_at).total_seconds())} ago"
    )


def wait_reason(
    execution: Execution,
    steps: Sequence[dict[str, Any]],
    now: datetime,
    work: Sequence[QueuedItem] = (),
    pollers: dict[str, Poller] | None = None,
    attempts: Sequence[Attempt] = (),
) -> str | None:
    """Why the execution is not moving right now, e.g. "waiting for approval of step deploy"; None if it is.
    `work` holds the execution's open queue items, `pollers` the last poll for their actions, and `attempts` the
    execution's attempts (which number a compensation's retry)."""
    items = {item.key.step_id: item for item in work if item.key.phase == "run"}
    compensations = {a.key.step_id: a.key.attempt for a in attempts if a.key.phase == "compensate"}
    if execution.terminal:
        return None
    if execution.status == "pending":
        return "waiting for the orchestration to start"
    reasons = []
    for step in steps:
        step_id, state = step["step_id"], step["state"]
        if state == "waiting" and step["action"] == "approval":
            reasons.append(f"waiting for approval of step {step_id}")
        elif state == "waiting":
            reasons.append(_worker_reason(step_id, items.get(step_id), pollers or {}, now))
        elif state == "retrying" and step["retry_at"] is not None:
            seconds = max(0, math.ceil((step["retry_at"] - now).total_seconds()))
            reasons.append(
                f"retrying step {step_id} in {seconds} s (attempt {step['attempt'] + 1} of {step['max_attempts']})"
            )
        elif state == "compensating" and step["retry_at"] is not None:
            seconds = max(0, math.ceil((step["retry_at"] - now).total_seconds()))
            failed = compensations.get(step_id)
            of = f" (attempt {failed + 1} of {step['max_attempts']})" if failed is not None else ""
            reasons.append(f"retrying the compensation of step {step_id} in {seconds} s{of}")
        elif state == "running" and step["action"] == "wait":
            reasons.append(f"waiting on a timer (step {step_id})")
    if execution.cancel_requested_at is not None:
        reasons.insert(0, "cancelling: waiting for work already started to end")
    return "; ".join(reasons) or None
