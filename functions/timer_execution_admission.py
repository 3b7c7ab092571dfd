# intent_ref: platform.execution
"""The execution admission timer: every second, lets tenants' queued executions into the engine as far as their
starting share has room (ADR 0041)."""

import logging

import azure.durable_functions as df
import azure.functions as func

from shared.engine.admission import admit_queued
from shared.typed_triggers import typed

bp = df.Blueprint()

logger = logging.getLogger(__name__)

SCHEDULE = "* * * * * *"
"""Every second (NCRONTAB with seconds, UTC): an execution getting under way lets the next in at once, from the
activity that records it; this run catches the rest (an execution a cancel or the sweeper ended, a start the backend
refused). A run with nothing queued is one query for tenant ids. Azure runs a timer function on one instance at a time; the claims under the tenant's lock make
an overlapping run harmless anyway."""


@typed(bp.function_name("execution_admission"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
@typed(bp.durable_client_input(client_name="client"))
async def execution_admission(
    timer: func.TimerRequest,  # noqa: ARG001  # the binding requires it
    client: df.DurableOrchestrationClient,
) -> None:
    """Start tenants' queued executions as far as each tenant's starting share has room."""
    result = await admit_queued(client)
    if result.started or result.failed_tenants:
        logger.info(
            "execution admission: %d started, %d of %d tenants failed",
            result.started,
            result.failed_tenants,
            result.tenants,
        )
