# intent_ref: platform.idempotency
"""The Idempotency-Key request header: one dependency and one format for every route that accepts it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import psycopg
from fastapi import Header, Request
from fastapi.responses import JSONResponse, Response
from psycopg.rows import DictRow

from shared.api.problems import FieldError, ProblemError
from shared.idempotency import (
    KEY_FORMAT,
    KEY_MAX_LENGTH,
    KEY_PATTERN,
    IdempotencyKeyReusedError,
    StoredResponse,
    claim,
    complete,
    fingerprint,
    kept,
    key_problem,
)

HEADER = "Idempotency-Key"
POINTER = "/header/idempotency-key"
DESCRIPTION = (
    "Makes the request safe to retry. A later request with the same key and the same request (method, route and "
    "body) replays the first answer and does the work only once; the same key with a different request is 422. "
    f"Format: {KEY_FORMAT}. A malformed key, or more than one Idempotency-Key header, is 400."
)


def _refused(detail: str) -> ProblemError:
    return ProblemError(
        400,
        "invalid-idempotency-key",
        "Bad request",
        detail,
        errors=[FieldError(pointer=POINTER, detail=detail)],
        extensions={"header": HEADER},
    )


def idempotency_key(
    request: Request,
    # Declared for the OpenAPI document only: the value is read from the raw headers below, because a declared
    # header parameter would silently take one of several values and answer 422 for a malformed one.
    idempotency_key: Annotated[  # noqa: ARG001
        str | None,
        Header(
            description=DESCRIPTION,
            json_schema_extra={"pattern": KEY_PATTERN, "minLength": 1, "maxLength": KEY_MAX_LENGTH},
        ),
    ] = None,
) -> str | None:
    """FastAPI dependency: the request's Idempotency-Key (None without one); 400 when repeated or malformed."""
    values = request.headers.getlist(HEADER)
    if len(values) > 1:
        raise _refused(f"send one {HEADER} header, not {len(values)}")
    if not values:
        return None
    problem = key_problem(values[0])
    if problem is not None:
        raise _refused(problem)
    return values[0]


def replay_or_claim(
    conn: psycopg.Connection[DictRow],
    key: str | None,
    request: Request,
    body: Any,
    *,
    principal: str | None = None,
    reveal: Callable[[Any], Any] | None = None,
) -> Response | None:
    """Inside the route's transaction: the first answer to `key` to replay, or None to do the work (the key now
    claimed until the transaction ends: a concurrent duplicate waits, then replays). None without a key.

    The key is the tenant's (a tenant transaction) or, with `principal`, that caller's (a control-plane transaction).
    It is bound to the method, the route's path, `body` and the caller; the same key with another request, or from
    another principal of the tenant, is 422. `reveal`
    turns a stored body back into the answer (one that was stored with a secret sealed, say)."""
    return None if key is None else _answered(claim, conn, key, request, body, principal=principal, reveal=reveal)


def replay_if_kept(
    conn: psycopg.Connection[DictRow],
    key: str | None,
    request: Request,
    body: Any,
    *,
    principal: str | None = None,
    reveal: Callable[[Any], Any] | None = None,
) -> Response | None:
    """`replay_or_claim`'s answer to a retry, read without claiming the key (None for a new request, or without a
    key): for a route that must tell a retry before work it does outside its transaction (a webhook URL's lookup),
    then claims the key with `replay_or_claim` in the transaction that does the work."""
    return None if key is None else _answered(kept, conn, key, request, body, principal=principal, reveal=reveal)


def _answered(
    read: Callable[..., StoredResponse | None],
    conn: psycopg.Connection[DictRow],
    key: str,
    request: Request,
    body: Any,
    *,
    principal: str | None,
    reveal: Callable[[Any], Any] | None,
) -> Response | None:
    """The stored answer `read` (`claim` or `kept`) finds for the key bound to this request and caller, as a
    response; 422 for the key used with another request."""
    context = getattr(request.state, "context", None)
    caller = None if principal is not None or context is None else context.principal.id
    bound = fingerprint(request.method, request.url.path, body, caller=caller)
    legacy = None if caller is None else fingerprint(request.method, request.url.path, body)
    try:
        stored = read(conn, key, bound, principal=principal, legacy_fingerprint=legacy)
    except IdempotencyKeyReusedError as exc:
        raise ProblemError(422, "idempotency-key", "Unprocessable content", str(exc)) from None
    if stored is None:
        return None
    answer = stored.body if reveal is None else reveal(stored.body)
    return JSONResponse(answer, status_code=stored.status, headers=stored.headers)


def remember(
    conn: psycopg.Connection[DictRow],
    key: str | None,
    status: int,
    body: Any,
    headers: dict[str, str] | None = None,
    *,
    principal: str | None = None,
) -> None:
    """Store the answer to replay for `key` (nothing without a key), in the transaction that did the work."""
    if key is not None:
        complete(conn, key, StoredResponse(status, body, headers or {}), principal=principal)
