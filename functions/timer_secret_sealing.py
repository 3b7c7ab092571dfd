# intent_ref: platform.hardening
"""The secret sealing timer: seals the secrets stored before sealing, or under the key before a rotation."""

import logging

import azure.functions as func

from shared.secret_sealing import seal_stored_secrets
from shared.typed_triggers import typed

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the SDK leaves its constructor unannotated

logger = logging.getLogger(__name__)

# Every 10 minutes (NCRONTAB with seconds, UTC). Sealing again what is sealed with the current key changes nothing,
# and each tenant's rows are locked while sealed, so an overlapping run (a slot swap) is harmless.
SCHEDULE = "0 */10 * * * *"


@typed(bp.function_name("secret_sealing"))
@typed(bp.timer_trigger(arg_name="timer", schedule=SCHEDULE, use_monitor=False))
def secret_sealing(timer: func.TimerRequest) -> None:  # noqa: ARG001  # the binding requires it
    """Seal, with the current sealing key, the stored secrets that are not yet (ADR 0040)."""
    result = seal_stored_secrets()
    if result.webhook_secrets or result.task_token_keys or result.failed_tenants or result.unopened:
        logger.info(
            "secret sealing: %d webhook secrets and %d task-token keys of %d tenants sealed, %d values did not open,"
            " %d tenants failed",
            result.webhook_secrets,
            result.task_token_keys,
            result.tenants,
            result.unopened,
            result.failed_tenants,
        )
