# intent_ref: platform.gateway
"""RFC 9457 problem details: the one shape every error of the API takes."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from shared.accepted_json import MAX_REFUSALS
from shared.api.request_ids import REQUEST_ID_HEADER, choose_request_id, scope_request_id
from shared.check_gate import CheckBusyError
from shared.db.session import TENANT_REFERENCE as TENANT_REFERENCE  # re-exported: its tests import it from here
from shared.db.session import tenant_erased_under
from shared.field_errors import bounded, count_text
from shared.field_errors import json_pointer as json_pointer  # re-exported: routes import it from here
from shared.observability import metrics
from shared.pagination import InvalidCursorError
from shared.registry.problems import MAX_REPORTED_ERRORS
from shared.registry.schema_refs import short_message
from shared.sealing import SealError

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://quantum-platform.dev/problems/"
DEPENDENCY_RETRY_AFTER_S = 2
"""Retry-After of a 503 for a dependency outage: about the database breaker's cooldown (shared/db/availability)."""
SECRET_RETRY_AFTER_S = 30
"""Retry-After of a 503 for a stored secret that does not open: an operator has to set the key back, which takes
longer than an outage's cooldown; a retry every half minute finds it back soon enough."""
MAX_LISTED_ERRORS = MAX_REPORTED_ERRORS
"""The most errors any problem document lists (the registry's checks report up to this many; a request that does
not validate, the first MAX_REFUSALS): a longer list is cut, and `detail` says how many there were (ADR 0016)."""
ROUTABLE_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
"""The methods a route of the app can take: those the HTTP function forwards to it (functions/http_api.py)."""


class FieldError(BaseModel):
    """One invalid field: a JSON pointer into the request and what is wrong there."""

    pointer: str
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem details document."""

    type: str = Field(description="URI identifying the problem type")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """Raise anywhere in request handling to answer with a problem+json response."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
        unlisted: int = 0,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail
        self.errors, self.headers, self.extensions = errors, headers or {}, extensions or {}
        self.unlisted = unlisted
        """Errors counted in the answer's `detail` but never built (they come after every listed one)."""


def invalid_fields(*problems: tuple[str, str], detail: str | None = None) -> ProblemError:
    """422 `validation-error` naming each problem as (JSON pointer into the request, what is wrong): the shape of a
    request that does not validate, for the checks a route makes itself; `detail` defaults to the count."""
    return ProblemError(
        422,
        "validation-error",
        "Request validation failed",
        detail or count_text(len(problems), len(problems)),
        errors=[FieldError(pointer=pointer, detail=what) for pointer, what in problems],
    )


class CountedValidationError(RequestValidationError):
    """A request's validation errors when the model saw only part of its body: `unlisted` more errors (members the
    model refuses, left out before validation) count in the answer's `detail` without being built."""

    def __init__(self, listed: RequestValidationError, unlisted: int) -> None:
        super().__init__(listed.errors(), body=listed.body)
        self.unlisted = unlisted


def over_rate(tenant_id: object, retry_after_s: float) -> ProblemError:
    """A request over its tenant's request rate: 429 `rate-limited`, retry after the whole seconds until a token."""
    retry_after = max(1, math.ceil(retry_after_s))
    detail = f"This tenant is over its request rate; retry in {retry_after} s."
    return too_many_requests(tenant_id, "rate-limited", detail, retry_after)


def too_many_requests(
    tenant_id: object, slug: str, detail: str, retry_after_s: int, *, limit: int | None = None
) -> ProblemError:
    """A tenant's request refused 429 with Retry-After (and the bound it hit, when there is one); counted in the
    `qp.requests.refused` metric by tenant and `slug`."""
    metrics.request_refused(tenant_id, slug)
    return ProblemError(
        429,
        slug,
        "Too many requests",
        detail,
        headers={"Retry-After": str(retry_after_s)},
        extensions={"limit": limit} if limit is not None else None,
    )


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def _slug(status: int) -> str:
    return _TITLES.get(status, "error").lower().replace(" ", "-")


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
    unlisted: int = 0,
) -> JSONResponse:
    """A problem+json response; `slug` names the problem type, `extensions` adds RFC 9457 extension members."""
    content = problem_document(
        status, slug, title, detail, instance=instance, errors=errors, extensions=extensions, unlisted=unlisted
    )
    return JSONResponse(content, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_document(
    status: int,
    slug: str,
    title: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    errors: list[FieldError] | None = None,
    extensions: dict[str, Any] | None = None,
    unlisted: int = 0,
) -> dict[str, Any]:
    """The problem+json object itself (extension members first, the standard members win); its error lists hold at
    most MAX_LISTED_ERRORS errors, each pointer and message cut by `short_message`; `unlisted` more were counted
    and never built."""
    total = max(len(errors or ()), _extension_error_count(extensions)) + unlisted
    if errors is not None:
        errors = [
            FieldError(pointer=short_message(e.pointer), detail=short_message(e.detail))
            for e in errors[:MAX_LISTED_ERRORS]
        ]
    if extensions and isinstance(extensions.get("errors"), list):
        listed = extensions["errors"][:MAX_LISTED_ERRORS]
        extensions = {**extensions, "errors": [bounded([e])[0] if isinstance(e, Mapping) else e for e in listed]}
    if total > MAX_LISTED_ERRORS:
        detail = f"{(detail or f'{total} errors').rstrip('.')}; the first {MAX_LISTED_ERRORS} of {total} are listed."
    body = Problem(
        type=PROBLEM_BASE + slug, title=title, status=status, detail=detail, instance=instance, errors=errors
    )
    return {**(extensions or {}), **body.model_dump(exclude_none=True)}


def _extension_error_count(extensions: dict[str, Any] | None) -> int:
    listed = (extensions or {}).get("errors")
    return len(listed) if isinstance(listed, list) else 0


def internal_error_document(request_id: str, instance: str | None = None) -> dict[str, Any]:
    """The body of a 500: what happened and the id to quote, nothing of the internals."""
    return problem_document(
        500,
        "internal-error",
        "Internal server error",
        "The request failed unexpectedly; quote the X-Request-Id when reporting it.",
        instance=instance,
        extensions={"request_id": request_id},
    )


# The one mapping of dependency failures to 503. psycopg.OperationalError covers refused and dropped connections,
# server shutdown, PoolTimeout and the breaker's DatabaseUnavailable; the blob SDK raises ServiceRequestError when
# it cannot reach the service and ServiceResponseError when the connection breaks before the answer.
DEPENDENCY_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (psycopg.OperationalError, "database"),
    (ServiceRequestError, "blob storage"),
    (ServiceResponseError, "blob storage"),
)


# The database is up, but it rolled the request's transaction back for a concurrent one's sake: a deadlock's victim or
# a serialization failure. Still 503 with Retry-After, as a client that retries on it should, without saying the
# database is down.
CONFLICT_ERRORS: tuple[type[Exception], ...] = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


TENANT_NOT_PROVISIONED = "the token's tenant is not provisioned on this platform"
"""The detail of the 401 that a valid token of an Entra tenant that maps to no platform tenant gets."""


def unknown_tenant() -> ProblemError:
    """The answer to a request of a tenant that does not exist: its token's tenant is no platform tenant's."""
    return ProblemError(
        401,
        "invalid-token",
        "Unauthorized",
        TENANT_NOT_PROVISIONED,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def tenant_gone(exc: BaseException) -> bool:
    """Whether `exc` is a row's reference to its tenant refused because the tenant row is gone: a request that waited
    on the row while the tenant's erasure held it, and then found it deleted. Only when the transaction's own pinned
    tenant was then found gone (shared.db.session.tenant_erased_under): a refused reference in a control-plane
    transaction, or one naming a tenant that is still there, is a bug, answered 500 and logged with its traceback."""
    return tenant_erased_under(exc)


def unavailable_dependency(exc: BaseException) -> str | None:
    """Which dependency `exc` says is unreachable ("database", "blob storage"), or None."""
    exc = _unwrap(exc)
    return next((name for kind, name in DEPENDENCY_ERRORS if isinstance(exc, kind)), None)


CLIENT_GONE = "qp.client_gone"
"""The scope key (and request-state key) set once a request's client went away before its answer began: nobody is
left to answer, and the layers outside send nothing and log nothing more (`client_gone`)."""


def mark_client_gone(scope: Scope) -> None:
    """Record in `scope` (and its request state, which copies of the scope share) that the client went away."""
    scope[CLIENT_GONE] = True
    state = scope.get("state")
    if isinstance(state, dict):
        state[CLIENT_GONE] = True


def client_gone(scope: Scope) -> bool:
    """Whether a layer inside found the request's client gone (`mark_client_gone`)."""
    state = scope.get("state")
    return scope.get(CLIENT_GONE) is True or (isinstance(state, dict) and state.get(CLIENT_GONE) is True)


def went_away(exc: BaseException) -> bool:
    """Whether `exc` says the client disconnected before it had sent its whole request (not a failure of the app)."""
    return isinstance(_unwrap(exc), ClientDisconnect)


class NobodyToAnswer(JSONResponse):
    """The answer to a request whose client went away: nothing is sent (a status line to a closed connection is
    read by nobody, and a 500 there counted an aborted upload as a failure of the app); the scope is marked so that
    the layers outside send nothing either (`client_gone`)."""

    def __init__(self) -> None:
        super().__init__(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        mark_client_gone(scope)


def error_response(exc: BaseException, *, instance: str, request_id: str | None) -> JSONResponse:
    """The problem+json answer to any exception, wherever it was caught; server-side failures are logged. A client
    that went away mid-request (ClientDisconnect) gets no answer (`NobodyToAnswer`) and one INFO line."""
    exc = _unwrap(exc)
    if isinstance(exc, ClientDisconnect):
        logger.info("request %s: the client went away before its answer to %r", request_id, instance)
        return NobodyToAnswer()
    if isinstance(exc, ProblemError):
        return problem_response(
            exc.status,
            exc.slug,
            exc.title,
            exc.detail,
            instance=instance,
            errors=exc.errors,
            headers=exc.headers,
            extensions=_with_request_id(exc.status, exc.extensions, request_id),
            unlisted=exc.unlisted,
        )
    if isinstance(exc, InvalidCursorError):
        return problem_response(400, "invalid-cursor", "Bad request", str(exc), instance=instance)
    if isinstance(exc, CheckBusyError):
        # The service serves the other tenants; this client is asked to slow down, as over its admission bound.
        busy = too_many_requests(exc.tenant_id, "check-busy", str(exc), exc.retry_after_s, limit=exc.limit)
        return error_response(busy, instance=instance, request_id=request_id)
    if tenant_gone(exc):
        # Erased while the request was at work: answered as the tenant's requests are from now on, not as a failure.
        # A WARNING all the same: each is a request an erasure cut short, and the count of them is worth seeing.
        logger.warning("request %s: its tenant was erased meanwhile (%s)", request_id, exc)
        return error_response(unknown_tenant(), instance=instance, request_id=request_id)
    if isinstance(exc, StarletteHTTPException):
        title = _TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        return problem_response(
            exc.status_code,
            _slug(exc.status_code),
            title,
            detail,
            instance=instance,
            headers=dict(exc.headers or {}),
            extensions=_with_request_id(exc.status_code, None, request_id),
        )
    if isinstance(exc, RequestValidationError):
        # A body of a hundred thousand members the model forbids has as many errors: the first few are listed (as
        # the ingress lists them for the same body), the count of all in `detail`.
        found = exc.errors()
        listed = [
            {"pointer": json_pointer(tuple(e.get("loc", ()))), "detail": str(e.get("msg", "invalid"))}
            for e in found[:MAX_REFUSALS]
        ]
        errors = [FieldError(**error) for error in bounded(listed)]
        total = len(found) + (exc.unlisted if isinstance(exc, CountedValidationError) else 0)
        return problem_response(
            422,
            "validation-error",
            "Request validation failed",
            count_text(total, len(errors)),
            instance=instance,
            errors=errors,
        )
    request_id = request_id or choose_request_id(None)
    headers = {"X-Request-Id": request_id}
    dependency = unavailable_dependency(exc)
    if dependency is not None:
        # An outage is not a bug: one line with the cause, no traceback per refused request.
        if isinstance(exc, CONFLICT_ERRORS):
            logger.warning("request %s: conflicted with a concurrent one (%s: %s)", request_id, type(exc).__name__, exc)
            detail = f"The request conflicted with a concurrent one; retry after {DEPENDENCY_RETRY_AFTER_S} seconds."
        else:
            logger.warning("request %s: %s unavailable (%s: %s)", request_id, dependency, type(exc).__name__, exc)
            detail = f"The {dependency} is unavailable at the moment; retry after {DEPENDENCY_RETRY_AFTER_S} seconds."
        return problem_response(
            503,
            "dependency-unavailable",
            "Service unavailable",
            detail,
            instance=instance,
            headers={**headers, "Retry-After": str(DEPENDENCY_RETRY_AFTER_S)},
            extensions={"request_id": request_id},
        )
    if isinstance(exc, SealError):
        # The key that opens a stored secret is not configured (or the stored value was altered): not the request's
        # fault, and what it would have changed rolled back, so the same request succeeds once the key is back. A
        # 503 says "later" to a client that retries (a remote worker's completion), where a 500 says "never".
        logger.error(
            "request %s: a stored secret does not open (%s); check QP_SEALING_KEY and QP_SEALING_KEY_PREVIOUS",
            request_id,
            exc,
        )
        return problem_response(
            503,
            "secret-unavailable",
            "Service unavailable",
            "A secret the platform keeps could not be opened; nothing was changed. "
            f"Retry after {SECRET_RETRY_AFTER_S} seconds.",
            instance=instance,
            headers={**headers, "Retry-After": str(SECRET_RETRY_AFTER_S)},
            extensions={"request_id": request_id},
        )
    # The path is percent-decoded: quoted with its escapes, so that a `%0A` in it cannot start a line of its own.
    logger.error("request %s: unhandled error on %r", request_id, instance, exc_info=exc)
    return JSONResponse(
        internal_error_document(request_id, instance), status_code=500, media_type=PROBLEM_JSON, headers=headers
    )


def _with_request_id(status: int, extensions: dict[str, Any] | None, request_id: str | None) -> dict[str, Any]:
    # A server-side failure is reported by quoting its request id, so every 5xx body names it.
    if status < 500 or request_id is None:
        return extensions or {}
    return {**(extensions or {}), "request_id": request_id}


def _unwrap(exc: BaseException) -> BaseException:
    # Task groups wrap a lone failure in an ExceptionGroup; the failure inside decides the answer.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def allowed_methods(scope: Scope, routes: Iterable[BaseRoute], named: str | None = None) -> str:
    """The Allow of a 405 (RFC 9110 §15.5.6): every method some route takes on the scope's path, sorted, with those
    already `named`. Starlette names only the methods of the first route whose path matched (`/api/v1/intents` takes
    GET from one route and POST from another), so each method is asked of the routes the way the router asks."""
    allowed = {method.strip().upper() for method in (named or "").split(",") if method.strip()}
    routes = list(routes)
    for method in ROUTABLE_METHODS:
        # A copy with the method swapped: the request's scope keeps the method it came with.
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in routes):
            allowed.add(method)
    return ", ".join(sorted(allowed))


def install_problem_handlers(app: FastAPI) -> None:
    """Turn every error (HTTP, validation, domain, outage, unexpected) into problem+json; never a stack trace."""

    async def _handle(request: Request, exc: Exception) -> JSONResponse:
        # Inside the app the request-id middleware has run; the catch-all (outermost) may run before it did.
        request_id = scope_request_id(request.scope) or choose_request_id(request.headers.get(REQUEST_ID_HEADER))
        response = error_response(exc, instance=request.url.path, request_id=request_id)
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 405:
            named = (exc.headers or {}).get("Allow")
            response.headers["Allow"] = allowed_methods(request.scope, app.router.routes, named)
        return response

    for kind in (
        ProblemError,
        InvalidCursorError,
        StarletteHTTPException,
        RequestValidationError,
        *(kind for kind, _ in DEPENDENCY_ERRORS),
        Exception,
    ):
        app.add_exception_handler(kind, _handle)
