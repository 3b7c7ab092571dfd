# intent_ref: platform.execution
"""The API's answer to a refused start: each of the start service's domain errors as problem+json."""

from __future__ import annotations

from shared.api.problems import ProblemError
from shared.engine import start as engine
from shared.engine.start_service import OrchestrationUnavailableError


def start_problem(exc: engine.StartError) -> ProblemError:
    """The problem a refused start answers (the execute and retry routes)."""
    match exc:
        case engine.IntentNotFoundError():
            return ProblemError(404, "not-found", "Not found", str(exc))
        case engine.StartForbiddenError():
            return ProblemError(403, "forbidden", "Forbidden", str(exc), extensions={"reason": exc.reason})
        case engine.GateRefusedError():
            return ProblemError(
                403,
                "gate-refused",
                "Forbidden",
                f"The tenant may not run this intent: {exc}.",
                extensions={
                    "reason": "gate_refused",
                    "violations": [{"step": v.step, "reason": v.reason, "value": v.value} for v in exc.violations],
                },
            )
        case engine.InvalidInputError():
            return ProblemError(
                422, "invalid-input", "Unprocessable content", str(exc), extensions={"errors": exc.errors}
            )
        case engine.QuotaExceededError():
            return ProblemError(
                429,
                "execution-quota",
                "Too many requests",
                str(exc),
                headers={"Retry-After": "30"},
                extensions={"limit": exc.limit},
            )
        case engine.PlanChangedError():
            return ProblemError(409, "plan-changed", "Conflict", str(exc), extensions={"plan_hash": exc.actual})
        case engine.TenantSuspendedError():
            return ProblemError(403, "forbidden", "Forbidden", str(exc), extensions={"reason": "tenant_suspended"})
        case engine.IntentArchivedError():
            return ProblemError(409, "archived", "Conflict", str(exc))
        case engine.NoLongerValidError():
            return ProblemError(409, "definition-invalid", "Conflict", f"The pinned version no longer validates: {exc}")
        case engine.InputTooLargeError():
            return ProblemError(
                413,
                "orchestration-input-too-large",
                "Payload too large",
                f"The execution cannot start: {exc}.",
                extensions={"size": exc.size, "limit": exc.limit},
            )
        case engine.IdempotencyConflictError():
            # As for every route that takes the key (ADR 0022): the key names one request, and this is another.
            return ProblemError(422, "idempotency-key", "Unprocessable content", str(exc))
    return ProblemError(500, "internal-error", "Internal server error")


def launch_problem(exc: OrchestrationUnavailableError) -> ProblemError:
    """The answer when the orchestration could not be started: retry shortly, with the same Idempotency-Key when
    the request had one (its execution waits, pending, for that retry to start it)."""
    detail = (
        "The execution was recorded but could not be started yet. Retry shortly with the same Idempotency-Key to"
        " start it; otherwise the platform starts it within minutes."
        if exc.pending
        else "The execution could not be started; it is recorded as failed. Retry shortly."
    )
    return ProblemError(503, "orchestration-unavailable", "Service unavailable", detail, headers={"Retry-After": "5"})
