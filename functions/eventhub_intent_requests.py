# intent_ref: platform.ingress
"""The intent-requests ingress function: producers' events start executions, or are recorded as rejected."""

import azure.durable_functions as df
import azure.functions as func

from shared.ingress.process import is_final_attempt, process_batch
from shared.ingress.request import INTENT_REQUESTS_HUB, from_trigger
from shared.typed_triggers import typed

bp = df.Blueprint()


@typed(bp.function_name("intent_requests"))
# Binary: the producer's bytes as sent. A string trigger has the host decode them, replacing invalid UTF-8 with U+FFFD,
# and the request would start with input it never sent instead of being refused as not UTF-8.
@typed(
    bp.event_hub_message_trigger(
        arg_name="events",
        event_hub_name=INTENT_REQUESTS_HUB,
        connection="EventHubConnection",
        data_type=func.DataType.BINARY,
        cardinality="many",
        consumer_group="intake",
    )
)
# The trigger checkpoints a failed batch too: a transient failure is retried in place instead (processing again
# is idempotent), over about as long as an outage the platform means to ride out.
@typed(
    bp.retry(
        strategy="exponential_backoff", max_retry_count="8", minimum_interval="00:00:05", maximum_interval="00:05:00"
    )
)
@typed(bp.durable_client_input(client_name="client"))
async def intent_requests(
    events: list[func.EventHubEvent], client: df.DurableOrchestrationClient, context: func.Context
) -> None:
    """Start the execution each event requests (idempotently), recording the events that cannot start anything. On
    the retry policy's last attempt, an event that still fails is logged as dropped (the host checkpoints it)."""
    retry = context.retry_context
    final = is_final_attempt(retry.retry_count, retry.max_retry_count) if retry is not None else False
    await process_batch(from_trigger(events), client, final_attempt=final)
