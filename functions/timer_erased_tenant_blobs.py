# intent_ref: platform.tenants
"""The erased tenant blobs timer: empties the blob prefix of erased tenants of what their erasure left (ADR 0046)."""

import logging

import azure.functions as func

from shared.tenants.erased_blobs import sweep_erased_tenant_blobs
from shared.typed_triggers import typed

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the SDK leaves its constructor unannotated

logger = logging.getLogger(__name__)

# Every 15 minutes (NCRONTAB with seconds, UTC): a blob left by a failed removal goes within minutes of storage being
# back, and a sweep of an empty prefix is one listing. Deletes are idempotent and a record is dropped only as it was
# read, so an overlapping run (a slot swap, the devhost next to a deployed app) is harmless.
SCHEDULE = "0 */15 * * * *"


@typed(bp.function_name("erased_tenant_blobs"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
def erased_tenant_blobs(timer: func.TimerRequest) -> None:  # noqa: ARG001  # the binding requires it
    """Delete the blobs left under erased tenants' prefixes; drop the records of prefixes found empty for good."""
    result = sweep_erased_tenant_blobs()
    if result.blobs or result.dropped or result.failed:
        logger.info(
            "erased tenant blobs: %d blobs of %d erased tenants deleted, %d records dropped, %d tenants failed",
            result.blobs,
            result.tenants,
            result.dropped,
            result.failed,
        )
