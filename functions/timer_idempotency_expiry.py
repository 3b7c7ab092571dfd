# intent_ref: platform.idempotency
"""The idempotency key expiry timer: every few minutes, keys past their 24 hours are deleted with their answers."""

import logging

import azure.functions as func

from shared.idempotency_expiry import delete_expired_keys
from shared.typed_triggers import typed

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the SDK leaves its constructor unannotated

logger = logging.getLogger(__name__)

# Every 5 minutes (NCRONTAB with seconds, UTC): a key lives 24 hours, so it goes within minutes of expiring. The
# deletes are idempotent, so an overlapping run (a slot swap, the devhost next to a deployed app) is harmless.
SCHEDULE = "0 */5 * * * *"


@typed(bp.function_name("idempotency_key_expiry"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
def idempotency_key_expiry(timer: func.TimerRequest) -> None:  # noqa: ARG001  # the binding requires it
    """Delete the idempotency keys (and the answers they keep) that expired: each tenant's, and the control plane's."""
    result = delete_expired_keys()
    if result.tenant_keys or result.control_keys or result.failed_tenants:
        logger.info(
            "idempotency key expiry: %d keys of %d tenants and %d control-plane keys deleted, %d tenants failed",
            result.tenant_keys,
            result.tenants,
            result.control_keys,
            result.failed_tenants,
        )
