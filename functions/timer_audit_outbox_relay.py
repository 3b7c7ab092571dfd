# intent_ref: platform.audit
"""The audit outbox relay timer: every minute, records still waiting in the outbox are written to the audit store."""

import logging

import azure.functions as func

from shared.audit import get_audit_store
from shared.typed_triggers import typed

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the SDK leaves its constructor unannotated

logger = logging.getLogger(__name__)

# Every minute (NCRONTAB with seconds, UTC). A record is normally written right after its transaction commits; this
# catches what that missed (the store was down, the process died in between). The store takes a record once, so an
# overlapping run is harmless.
SCHEDULE = "30 * * * * *"


@typed(bp.function_name("audit_outbox_relay"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
def audit_outbox_relay(timer: func.TimerRequest) -> None:  # noqa: ARG001  # the binding requires it
    """Write the audit records still waiting in the outbox to the audit store (Cosmos DB; nothing for Postgres)."""
    copied = get_audit_store().relay_queued()
    if copied:
        logger.info("audit outbox relay: %d records written", copied)
