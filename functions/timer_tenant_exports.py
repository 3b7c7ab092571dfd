# intent_ref: platform.tenants
"""The tenant exports timer: runs the export jobs that `POST /tenants/{id}/export` queued (ADR 0012, amended)."""

import logging

import azure.functions as func

from shared.tenants.export_jobs import run_export_jobs
from shared.typed_triggers import typed

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the SDK leaves its constructor unannotated

logger = logging.getLogger(__name__)

# Every 30 seconds (NCRONTAB with seconds, UTC): a small tenant's export is done within a minute of its request. Jobs
# are claimed with FOR UPDATE SKIP LOCKED under a lease, so an overlapping run (a slot swap, the devhost next to a
# deployed app) takes other jobs, never the same one.
SCHEDULE = "*/30 * * * * *"


@typed(bp.function_name("tenant_exports"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
def tenant_exports(timer: func.TimerRequest) -> None:  # noqa: ARG001  # the binding requires it
    """Run the due export jobs, oldest first, within the run's bounds; a killed attempt's job is retried."""
    result = run_export_jobs()
    if result.taken:
        logger.info(
            "tenant exports: %d jobs run (%d succeeded, %d failed, %d retried after a killed attempt)",
            result.taken,
            result.succeeded,
            result.failed,
            result.retried,
        )
