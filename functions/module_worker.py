# intent_ref: platform.execution
"""The module worker function: built-in step work from the `module-work` hub, results raised to orchestrations."""

import azure.durable_functions as df
import azure.functions as func

from shared.engine.worker import process_batch
from shared.observability.received import received_work
from shared.typed_triggers import typed

bp = df.Blueprint()


@typed(bp.function_name("module_worker"))
# A batch that failed (a verdict not recorded or raised, a worker process gone) runs again at once-ish, rather than
# leaving its steps to their timeouts: claims make the rerun do only what is not done (ADRs 0026, 0037).
@typed(
    bp.retry(
        strategy="exponential_backoff", max_retry_count="5", minimum_interval="00:00:01", maximum_interval="00:00:15"
    )
)
@typed(
    bp.event_hub_message_trigger(
        arg_name="events",
        event_hub_name="module-work",
        connection="EventHubConnection",
        # The bodies as the platform wrote them, not as the host re-decodes a string trigger's text.
        data_type=func.DataType.BINARY,
        cardinality="many",
        consumer_group="module-worker",
    )
)
@typed(bp.durable_client_input(client_name="client"))
async def module_worker(events: list[func.EventHubEvent], client: df.DurableOrchestrationClient) -> None:
    """Run the built-in actions of a batch of work items and raise each result to its orchestration."""
    received = received_work(events)
    await process_batch(
        received.bodies, client, traceparents=received.traceparents, first_enqueued=received.first_enqueued
    )
