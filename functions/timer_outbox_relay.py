# intent_ref: platform.events
"""The outbox relay timer: every second, domain events of the outbox go to `platform-events`."""

import logging

import azure.functions as func

from shared.events.relay import relay_pending
from shared.typed_triggers import typed

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the SDK leaves its constructor unannotated

logger = logging.getLogger(__name__)

# NCRONTAB with seconds, UTC. Azure runs a timer function on one instance at a time; the relay's
# locks make an overlapping run (a slot swap, the devhost next to a deployed app) harmless anyway.
SCHEDULE = "* * * * * *"
"""Every second: a run with nothing to do is one query for tenant ids, and consumers of `platform-events` (and the
webhook deliveries recorded with each publish) hear of an event within about a second (ADR 0015)."""


@typed(bp.function_name("outbox_relay"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
def outbox_relay(timer: func.TimerRequest) -> None:  # noqa: ARG001  # the binding requires it
    """Publish the outbox's unpublished domain events to platform-events, then mark them published."""
    result = relay_pending()
    if result.published or result.failed_tenants:
        logger.info(
            "outbox relay: %d events of %d tenants published, %d tenants failed",
            result.published,
            result.tenants,
            result.failed_tenants,
        )
