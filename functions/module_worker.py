# intent_ref: platform.execution
"""The module worker function: built-in step work from the `module-work` hub, results raised to orchestrations."""

import azure.durable_functions as df
import azure.functions as func

from shared.engine.worker import process_batch
from shared.observability.received import received_work

bp = df.Blueprint()


@bp.function_name("module_worker")
@bp.event_hub_message_trigger(
    arg_name="events",
    event_hub_name="module-work",
    connection="EventHubConnection",
    cardinality="many",
    consumer_group="module-worker",
)
@bp.durable_client_input(client_name="client")
async def module_worker(events: list[func.EventHubEvent], client: df.DurableOrchestrationClient) -> None:
    """Run the built-in actions of a batch of work items and raise each result to its orchestration."""
    bodies, traceparents = received_work(events)
    await process_batch(bodies, client, traceparents=traceparents)
