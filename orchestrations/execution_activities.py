# intent_ref: platform.execution
"""The intent orchestrator's activities: dispatch a step's work, record progress, read a stored output, cancel a
child."""

from typing import Any
from uuid import UUID

import azure.durable_functions as df

from shared.engine import control, payloads, progress

bp = df.Blueprint()


@bp.activity_trigger(input_name="request")
def dispatch_step(request: dict[str, Any]) -> None:
    """Record a step attempt and publish its work to `module-work`."""
    progress.dispatch_step(request)


@bp.activity_trigger(input_name="request")
def record_progress(request: dict[str, Any]) -> Any:
    """Record a transition of the execution or one of its steps; answers what was recorded."""
    return progress.record_progress(request)


@bp.activity_trigger(input_name="request")
def load_output(request: dict[str, Any]) -> Any:
    """The parts of a step output stored as a blob that later steps reference."""
    return payloads.load_parts(
        UUID(request["tenant_id"]), request["output"], [tuple(path) for path in request["paths"]]
    )


@bp.activity_trigger(input_name="request")
@bp.durable_client_input(client_name="client")
async def cancel_child(request: dict[str, Any], client: df.DurableOrchestrationClient) -> bool:
    """Cancel a child execution of a stopping parent; answers whether the child was still running."""
    return await control.cancel_child(
        UUID(request["tenant_id"]), UUID(request["child_execution_id"]), UUID(request["execution_id"]), client
    )
