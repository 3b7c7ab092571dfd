# intent_ref: platform.events
"""The event retention timer: every five minutes, delivered webhook deliveries and published outbox rows past their
periods are deleted, a bounded batch at a time (ADR 0049)."""

import logging

import azure.functions as func

from shared.events.retention import delete_past_retention
from shared.typed_triggers import typed

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the SDK leaves its constructor unannotated

logger = logging.getLogger(__name__)

# Every 5 minutes at second 30 (NCRONTAB with seconds, UTC), half a minute after the idempotency key expiry. The
# deletes skip the rows another transaction holds and are idempotent, so an overlapping run (a slot swap, the devhost
# next to a deployed app) is harmless.
SCHEDULE = "30 */5 * * * *"


@typed(bp.function_name("event_retention"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
def event_retention(timer: func.TimerRequest) -> None:  # noqa: ARG001  # the binding requires it
    """Delete the delivered webhook deliveries and the published outbox rows past their periods."""
    result = delete_past_retention()
    if result.deliveries or result.events or result.failed_tenants:
        logger.info(
            "event retention: %d webhook deliveries and %d outbox events of %d tenants deleted, %d tenants failed%s",
            result.deliveries,
            result.events,
            result.tenants,
            result.failed_tenants,
            "; more wait for the next run" if result.rows_left else "",
        )
