# intent_ref: platform.events
"""The webhook delivery timer: every second, due deliveries go to their subscribers, signed (ADR 0030)."""

import logging

import azure.functions as func

from shared.events.webhooks import deliver_due
from shared.typed_triggers import typed

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the SDK leaves its constructor unannotated

logger = logging.getLogger(__name__)

# As often as the outbox relay that records the deliveries (NCRONTAB with seconds, UTC). Claims (a held next
# attempt) make an overlapping run harmless: each delivery is sent by one run at a time.
SCHEDULE = "* * * * * *"
"""Every second: a run with nothing to do is one query for tenant ids, and a subscriber hears of an event within
about two seconds (the relay's period, then the delivery's; ADR 0030)."""


@typed(bp.function_name("webhook_delivery"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
def webhook_delivery(timer: func.TimerRequest) -> None:  # noqa: ARG001  # the binding requires it
    """Send the webhook deliveries that are due, oldest first per subscription; retry the failed with backoff."""
    result = deliver_due()
    if result.delivered or result.failed_attempts or result.disabled or result.left or result.tenants_left:
        logger.info(
            "webhooks: %d delivered, %d attempts failed, %d subscriptions disabled, %d left for the next run,"
            " %d tenants not reached",
            result.delivered,
            result.failed_attempts,
            result.disabled,
            result.left,
            result.tenants_left,
        )
    if result.under_way:
        # Sends the run left to their receivers past its budget: each records its own outcome when it ends.
        logger.info("webhooks: %d sends still under way, left to end on their own", result.under_way)
