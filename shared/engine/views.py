# intent_ref: platform.execution
"""How an execution reads to a person: each step with its attempts, and a plain-language reason it is waiting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.engine.executions import Execution
from shared.engine.steps import Attempt


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


def wait_reason(execution: Execution, steps: Sequence[dict[str, Any]], now: datetime) -> str | None:
    """Why the execution is not moving right now, e.g. "waiting for approval of step deploy"; None if it is."""
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
            reasons.append(f"waiting for a worker to complete step {step_id}")
        elif state == "retrying" and step["retry_at"] is not None:
            seconds = max(0, math.ceil((step["retry_at"] - now).total_seconds()))
            reasons.append(
                f"retrying step {step_id} in {seconds} s (attempt {step['attempt'] + 1} of {step['max_attempts']})"
            )
        elif state == "running" and step["action"] == "wait":
            reasons.append(f"waiting on a timer (step {step_id})")
    if execution.cancel_requested_at is not None:
        reasons.insert(0, "cancelling: waiting for work already started to end")
    return "; ".join(reasons) or None
