# intent_ref: platform.execution
"""The intent orchestrator's activities, each a verb taking one model: dispatch steps, record outcomes and statuses,
read a stored output, cancel a child (and the first generation's two, while its executions may still run)."""

from typing import Any
from uuid import UUID

import azure.durable_functions as df

from shared.engine import control, machine, payloads, progress
from shared.engine.activity_trace import activity_span
from shared.typed_triggers import typed

bp = df.Blueprint()


@typed(bp.activity_trigger(input_name="request"))
def dispatch_steps(request: dict[str, Any]) -> dict[str, Any]:
    """Record a batch of step moves and attempt starts; publish module work; start child executions."""
    with activity_span("dispatch_steps", request) as body:
        return progress.dispatch_steps(machine.DispatchSteps.model_validate(body)).model_dump(mode="json")


@typed(bp.activity_trigger(input_name="request"))
def record_outcomes(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Record outcomes the orchestration observed; answers the verdicts applied."""
    with activity_span("record_outcomes", request) as body:
        return progress.record_outcomes(machine.RecordOutcomes.model_validate(body))


@typed(bp.activity_trigger(input_name="request"))
def record_status(request: dict[str, Any]) -> dict[str, Any]:
    """Move the execution to a status; answers where it is afterwards."""
    with activity_span("record_status", request) as body:
        return progress.record_status(machine.RecordStatus.model_validate(body)).model_dump(mode="json")


@typed(bp.activity_trigger(input_name="request"))
def load_output(request: dict[str, Any]) -> Any:
    """The parts of a step output stored as a blob that later steps reference."""
    with activity_span("load_output", request) as body:
        load = machine.LoadOutput.model_validate(body)
        return payloads.load_parts(
            UUID(load.tenant_id), load.output, [tuple(path) for path in load.paths], child=load.child
        )


@typed(bp.activity_trigger(input_name="request"))
@typed(bp.durable_client_input(client_name="client"))
async def cancel_child(request: dict[str, Any], client: df.DurableOrchestrationClient) -> bool:
    """Cancel a child execution of a stopping parent; answers whether the child was still running."""
    with activity_span("cancel_child", request) as body:
        cancel = machine.CancelChild.model_validate(body)
        return await control.cancel_child(
            UUID(cancel.tenant_id), UUID(cancel.child_execution_id), UUID(cancel.execution_id), client
        )


@typed(bp.activity_trigger(input_name="request"))
def dispatch_step(request: dict[str, Any]) -> None:
    """First generation: record a step attempt and publish its work to `module-work`."""
    progress.dispatch_step(request)


@typed(bp.activity_trigger(input_name="request"))
def record_progress(request: dict[str, Any]) -> Any:
    """First generation: record a transition of the execution or one of its steps; answers what was recorded."""
    return progress.record_progress(request)
