# intent_ref: platform.gateway
"""OpenAPI documentation of problem+json error responses, shared by every router."""

from __future__ import annotations

from typing import Any

from shared.api.problems import PROBLEM_BASE, PROBLEM_JSON, Problem

Responses = dict[int | str, dict[str, Any]]


def problem_doc(status: int, slug: str, title: str, detail: str, description: str, **extensions: Any) -> dict[str, Any]:
    """One documented error response: its description and a problem+json example."""
    example = {**extensions, "type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
    # `model` registers the Problem component (FastAPI files its schema under application/json); the
    # problem+json entry, what is actually sent, gets the same schema beside its example.
    content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}, "example": example}}
    return {"model": Problem, "description": description, "content": content}


UNAUTHORIZED = problem_doc(401, "invalid-token", "Unauthorized", "the token has expired", "No valid bearer token")
FORBIDDEN = problem_doc(
    403,
    "forbidden",
    "Forbidden",
    "Not allowed to intent.update.",
    "The caller's roles or the tenant's policies do not allow it, or the tenant is suspended",
    reason="role_required",
)
NOT_FOUND = problem_doc(
    404,
    "not-found",
    "Not found",
    "No such item.",
    "Not in the caller's tenant (another tenant's item is not found either)",
)
RATE_LIMITED = problem_doc(
    429,
    "rate-limited",
    "Too many requests",
    "This tenant is over its request rate; retry in 3 s.",
    "Over the tenant's request rate (`rate-limited`) or its requests in flight (`tenant-busy`); see Retry-After",
)
BAD_CURSOR = problem_doc(
    400, "invalid-cursor", "Bad request", "the cursor is not one this API issued", "A malformed cursor"
)
INVALID = problem_doc(
    422,
    "validation-error",
    "Request validation failed",
    "1 invalid field(s)",
    "The request does not validate (its problems listed with JSON pointers; each of the platform's own checks names "
    "at most 50)",
    errors=[{"pointer": "/name", "detail": "String should match pattern"}],
)
CONFLICT = problem_doc(409, "conflict", "Conflict", "A resource with this name exists.", "The name is taken")
PRECONDITION_FAILED = problem_doc(
    412,
    "precondition-failed",
    "Precondition failed",
    "The resource changed since that ETag was issued.",
    "If-Match holds a stale ETag",
)
BAD_IDEMPOTENCY_KEY = problem_doc(
    400,
    "invalid-idempotency-key",
    "Bad request",
    "send one Idempotency-Key header, not 2",
    "The Idempotency-Key header is malformed or sent more than once (see its format)",
    header="Idempotency-Key",
    errors=[{"pointer": "/header/idempotency-key", "detail": "send one Idempotency-Key header, not 2"}],
)
IDEMPOTENCY_KEY_REUSED = problem_doc(
    422,
    "idempotency-key",
    "Unprocessable content",
    "the idempotency key was already used for a different request",
    "The Idempotency-Key was used before for a different request",
)
PRECONDITION_REQUIRED = problem_doc(
    428,
    "precondition-required",
    "Precondition required",
    "Send If-Match with the resource's ETag.",
    "If-Match is required",
)

UNAVAILABLE = problem_doc(
    503,
    "dependency-unavailable",
    "Service unavailable",
    "The database is unavailable; retry in 2 s.",
    "A dependency such as the database is unavailable, or the request conflicted with a concurrent one (a "
    "deadlock or a serialization failure; `dependency-unavailable`), or a secret the platform keeps does not open "
    "(`secret-unavailable`: its key is not configured); always with Retry-After",
)

REPEATED_HEADER = problem_doc(
    400,
    "repeated-header",
    "Bad request",
    "send one Authorization header, not 2",
    "An Authorization or Last-Event-ID header is sent more than once (refused so on every route)",
    header="Authorization",
    errors=[{"pointer": "/header/authorization", "detail": "send one Authorization header, not 2"}],
)

AUTH_ERRORS: Responses = {401: UNAUTHORIZED, 403: FORBIDDEN, 429: RATE_LIMITED, 503: UNAVAILABLE}
"""What any authenticated route may answer before it runs (and REPEATED_HEADER, which the document adds to every
operation that documents a 401, beside the route's own 400s: shared/api/docs.py)."""


def ok_example(example: Any, status: int = 200) -> Responses:
    """The documented success response with an example body."""
    return {status: {"content": {"application/json": {"example": example}}}}
