# intent_ref: platform.execution
"""The stuck-execution sweeper timer: starts stalled executions, ends those whose orchestration ended unrecorded or
waits on nothing."""

import logging

import azure.durable_functions as df
import azure.functions as func

from shared.engine.sweeper import sweep
from shared.typed_triggers import typed

bp = df.Blueprint()

logger = logging.getLogger(__name__)

# Every 30 seconds (NCRONTAB with seconds, UTC): a stalled start waits out its 60 s grace and at most one more run.
# Azure runs a timer function on one instance at a time; the claim and the conditional transitions make an
# overlapping run (a slot swap, the devhost next to a deployed app) harmless anyway.
SCHEDULE = "*/30 * * * * *"


@typed(bp.function_name("execution_sweeper"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
@typed(bp.durable_client_input(client_name="client"))
async def execution_sweeper(
    timer: func.TimerRequest,  # noqa: ARG001  # the binding requires it
    client: df.DurableOrchestrationClient,
) -> None:
    """Start executions whose start stalled and end those whose orchestration ended without recording it, or still
    runs stuck compensating with nothing out or due (then terminated)."""
    result = await sweep(client)
    if result.started or result.ended or result.failed_tenants or result.expired_leases or result.busy:
        logger.info(
            "execution sweeper: %d started, %d ended, %d leases expired, %d status calls, %d left for a later run"
            " (their tenant's checks busy), %d of %d tenants failed",
            result.started,
            result.ended,
            result.expired_leases,
            result.checked + result.inputs,
            result.busy,
            result.failed_tenants,
            result.tenants,
        )
