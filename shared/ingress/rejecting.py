# intent_ref: platform.ingress
"""Why an intent-requests event starts nothing: the start service's refusals and the ingress's own checks translated
to a rejection reason and the problem document recorded with it.

The document is the one the execute route answers for the same refusal (ADR 0019), so a producer reads a rejection
as an API client reads a refusal; a test holds the two translations to each other. It is stored, so it is bounded: at
most MAX_REFUSALS field errors (the count of all in `detail`), each pointer and message at most MAX_MESSAGE_LENGTH
characters.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared.accepted_json import NotAcceptedJSONError
from shared.engine import start as engine
from shared.field_errors import bounded, count_text, json_pointer
from shared.ingress.request import TooManyMembersError

PROBLEM_BASE = "https://quantum-platform.dev/problems/"


class Rejected(Exception):
    """An event that can never start anything as sent: its reason code and the problem document's members."""

    def __init__(
        self,
        reason: str,
        status: int,
        slug: str,
        title: str,
        detail: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.reason, self.status, self.slug, self.title, self.detail = reason, status, slug, title, detail
        self.errors, self.extensions = errors, extensions or {}

    def document(self, instance: str) -> dict[str, Any]:
        """The RFC 9457 document recorded for the event `instance` (extension members first, the standard win)."""
        members = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            "errors": self.errors,
        }
        return {**self.extensions, **{name: value for name, value in members.items() if value is not None}}


def refused_start(exc: engine.StartError) -> Rejected | None:
    """A refused start as a rejection; None for a refusal this edge does not know (raised: retried, never recorded)."""
    match exc:
        case engine.IntentNotFoundError():
            return Rejected("not_found", 404, "not-found", "Not found", str(exc))
        case engine.StartForbiddenError():
            return Rejected("forbidden", 403, "forbidden", "Forbidden", str(exc), extensions={"reason": exc.reason})
        case engine.GateRefusedError():
            return Rejected(
                "forbidden",
                403,
                "gate-refused",
                "Forbidden",
                f"The tenant may not run this intent: {exc}.",
                extensions={
                    "reason": "gate_refused",
                    "violations": [{"step": v.step, "reason": v.reason, "value": v.value} for v in exc.violations],
                },
            )
        case engine.TenantSuspendedError():
            return Rejected(
                "forbidden", 403, "forbidden", "Forbidden", str(exc), extensions={"reason": "tenant_suspended"}
            )
        case engine.InvalidInputError():
            return Rejected(
                "invalid",
                422,
                "invalid-input",
                "Unprocessable content",
                str(exc),
                extensions={"errors": bounded(exc.errors)},
            )
        case engine.InputTooLargeError():
            # Sent again it is refused again: recorded, not retried (a poison batch held its partition).
            return Rejected(
                "invalid",
                413,
                "orchestration-input-too-large",
                "Payload too large",
                f"The execution cannot start: {exc}.",
                extensions={"size": exc.size, "limit": exc.limit},
            )
        case engine.IdempotencyConflictError():
            # A key names one request; reusing it for another is a malformed request (ADR 0022), not a conflict.
            return Rejected("invalid", 422, "idempotency-key", "Unprocessable content", str(exc))
        case engine.QuotaExceededError():
            return Rejected(
                "quota_exceeded", 429, "execution-quota", "Too many requests", str(exc), extensions={"limit": exc.limit}
            )
        case engine.PlanChangedError():
            return Rejected("conflict", 409, "plan-changed", "Conflict", str(exc), extensions={"plan_hash": exc.actual})
        case engine.IntentArchivedError():
            return Rejected("conflict", 409, "archived", "Conflict", str(exc))
        case engine.NoLongerValidError():
            return Rejected(
                "conflict", 409, "definition-invalid", "Conflict", f"The pinned version no longer validates: {exc}"
            )
    return None


def invalid_body(exc: ValueError) -> Rejected:
    """A body that is not the request model (each invalid field with its pointer, the first MAX_REFUSALS), or not a
    JSON object at all."""
    judged, total = (exc.validation, exc.total) if isinstance(exc, TooManyMembersError) else (exc, None)
    if isinstance(judged, ValidationError):
        found = judged.errors(include_url=False, include_context=False, include_input=False)
        errors = bounded([{"pointer": json_pointer(error["loc"]), "detail": error["msg"]} for error in found])
        return Rejected(
            "invalid",
            422,
            "validation-error",
            "Request validation failed",
            count_text(total or len(found), len(errors)),
            errors=errors,
        )
    return Rejected("invalid", 422, "validation-error", "Request validation failed", "the body is not a JSON object")


def not_accepted(exc: NotAcceptedJSONError) -> Rejected:
    """A body that is not JSON the platform accepts, each refusal with its machine-readable code (as the API's edge
    answers it, the errors as an extension member)."""
    errors = bounded([{"pointer": r.pointer, "detail": r.detail, "code": r.code} for r in exc.refusals])
    return Rejected(
        "invalid",
        422,
        "validation-error",
        "Request validation failed",
        count_text(len(exc.refusals), len(errors)),
        extensions={"errors": errors},
    )


def stale(exc: Exception) -> Rejected:
    """An event the hub accepted too long ago to act on."""
    return Rejected("stale", 422, "stale-request", "Unprocessable content", str(exc))
