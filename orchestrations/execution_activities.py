# intent_ref: platform.execution
"""The intent orchestrator's activities: dispatch a step's work, and record the execution's progress."""

from typing import Any

import azure.durable_functions as df

from shared.engine import progress

bp = df.Blueprint()


@bp.activity_trigger(input_name="request")
def dispatch_step(request: dict[str, Any]) -> None:
    """Record a step attempt and publish its work to `module-work`."""
    progress.dispatch_step(request)


@bp.activity_trigger(input_name="request")
def record_progress(request: dict[str, Any]) -> Any:
    """Record a transition of the execution or one of its steps; answers what was recorded."""
    return progress.record_progress(request)
