# intent_ref: platform.gateway
"""ASGI middleware: X-Request-Id correlation, the error boundaries and the request body size limit."""

from __future__ import annotations

import contextvars
import logging
from typing import Any
from urllib.parse import quote

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.accepted_json import NOT_UTF8, NotAcceptedJSONError, Refusal
from shared.api.problems import (
    PROBLEM_JSON,
    client_gone,
    error_response,
    internal_error_document,
    problem_response,
    went_away,
)
from shared.api.request_ids import REQUEST_ID_HEADER, choose_request_id, scope_request_id

logger = logging.getLogger(__name__)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdMiddleware:
    """Take the caller's X-Request-Id when it is well-formed (else mint one), echo it and expose it to logs.

    Also the app's error boundary: whatever the layers inside raise (routes, dependencies, other middleware) is
    answered here as problem+json with the request id, and logged with it, instead of escaping to the server.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = choose_request_id(_header(scope, REQUEST_ID_HEADER))
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})
        if isinstance(scope["state"], dict):
            scope["state"]["request_id"] = request_id

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                if went_away(exc):
                    # The client left mid-answer: nobody to finish it for, and no failure of the app.
                    logger.info("request %s: the client went away during its answer", request_id)
                    return
                # Too late for another status line; the truncated answer stands, the cause is in the log.
                logger.error("request %s failed after its response started", request_id, exc_info=exc)
                return
            # A client that went away (ClientDisconnect) is sent nothing and the scope marked (`NobodyToAnswer`).
            response = error_response(exc, instance=str(scope.get("path", "")), request_id=request_id)
            await response(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class ErrorBoundary:
    """Wraps the whole ASGI app for the Functions adapter: nothing escapes to the host, every request is answered.

    Starlette answers an error that reaches its outermost layer and then raises it again for the server to log;
    the Functions adapter would turn that raise into a failed invocation, which the host answers with an empty
    500. Here an error after the answer is dropped (it is logged already), and one before any answer (or an app
    that returns without answering) gets problem+json, unless the client went away first (a layer inside marked
    the scope, `client_gone`, or raised ClientDisconnect): nobody is left to answer, and nothing is sent. A query
    string that is not UTF-8 as sent is refused here (422) before the app runs: its outermost layer when telemetry
    is on cannot take one (`_refuse_query`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, path = False, str(scope.get("path", ""))
        if not _is_utf8(scope.get("query_string") or b""):
            await _refuse_query(scope, receive, send)
            return

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if not started:
                await error_response(exc, instance=path, request_id=_known_request_id(scope))(scope, receive, send)
            return
        if not started:
            request_id = _known_request_id(scope)
            if client_gone(scope):
                # Logged at INFO where it was found: an aborted upload is no failure of the app, and no 500.
                return
            # The path is percent-decoded: quoted with its escapes, so a `%0A` in it cannot start a line of its own.
            logger.error("request %s: the app returned without answering %r", request_id, path)
            await JSONResponse(
                internal_error_document(request_id, path),
                status_code=500,
                media_type=PROBLEM_JSON,
                headers={"X-Request-Id": request_id},
            )(scope, receive, send)


def _is_utf8(raw: Any) -> bool:
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _refuse_query(scope: Scope, receive: Receive, send: Send) -> None:
    """The 422 the accepted-input edge answers to query text that is not UTF-8, given here before any layer of the
    app runs: the request's telemetry span, outermost in the app when telemetry is on, decodes the query string as
    sent and raised on such bytes, which the server then answered 500 text/plain without a request id."""
    # Here, not at the top: the accepted-input edge's imports (its routes' permissions) import this module.
    from shared.api.accepted_input import query_refusals, refused_problem

    raw = bytes(scope.get("query_string") or b"")
    # Bytes that are not UTF-8 as sent may still decode once percent-decoded (`\xc3%A9`): the query as a whole then.
    refusals = query_refusals(raw) or [Refusal("/query", "the query string is not UTF-8 as sent", NOT_UTF8)]
    problem = refused_problem(NotAcceptedJSONError(refusals))
    raw_path = scope.get("raw_path")
    instance = quote(bytes(raw_path), safe="/%") if raw_path else quote(str(scope.get("path", "")), safe="/")
    response = problem_response(
        problem.status,
        problem.slug,
        problem.title,
        problem.detail,
        instance=instance,
        headers={REQUEST_ID_HEADER: _known_request_id(scope)},
        extensions=problem.extensions,
    )
    await response(scope, receive, send)


class BodySizeLimitMiddleware:
    """Refuse bodies over the limit with 413 before any handler reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, "content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            "payload-too-large",
            "Payload too large",
            f"The request body exceeds the limit of {self.max_bytes} bytes.",
            instance=str(scope.get("path", "")),
        )
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _known_request_id(scope: Scope) -> str:
    # The request-id middleware's choice when it ran, else the same rule applied here.
    return scope_request_id(scope) or choose_request_id(_header(scope, REQUEST_ID_HEADER))


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    headers: Any = scope.get("headers") or []
    for key, value in headers:
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None
