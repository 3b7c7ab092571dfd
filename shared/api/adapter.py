# intent_ref: platform.gateway
"""The Functions HTTP-stream adapter around an ASGI app: the answer streams as the app sends it, and no request
ends as an unhandled function exception."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.api.middleware import ErrorBoundary
from shared.api.problems import PROBLEM_JSON, internal_error_document
from shared.api.request_ids import REQUEST_ID_HEADER, choose_request_id

logger = logging.getLogger(__name__)

_FORWARDED_SCOPE = (
    "type",
    "asgi",
    "http_version",
    "server",
    "client",
    "scheme",
    "method",
    "root_path",
    "path",
    "raw_path",
    "query_string",
    "headers",
    "extensions",
)
"""What the app sees of the host's request scope: the request itself, none of the host's own routing state."""
_BUFFERED_MESSAGES = 4
"""Body messages the app may send ahead of the client: a slow reader slows the app down instead of filling memory."""


class Gateway:
    """The app behind the boundary that answers whatever the app lets escape."""

    def __init__(self, app: ASGIApp) -> None:
        self._app: ASGIApp = ErrorBoundary(app)

    @property
    def app(self) -> ASGIApp:
        """What serves the requests."""
        return self._app


def asgi_gateway(app: ASGIApp) -> Gateway:
    """The adapter for `app`."""
    return Gateway(app)


class RelayedResponse(Response):
    """The app's answer, started already: its status and headers are known, its body is passed on as it is sent."""

    def __init__(self, start: Message, body: asyncio.Queue[Message | None], app_task: asyncio.Task[None]) -> None:
        self.status_code = int(start["status"])
        self.raw_headers = list(start.get("headers", []))
        self.background = None
        self._start, self._body, self._app_task = start, body, app_task

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        try:
            await send(self._start)
            while (message := await self._body.get()) is not None:
                await send(message)
        finally:
            # A client that went away ends the app's work too (an event stream stops following its execution).
            if not self._app_task.done():
                self._app_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._app_task


async def serve(gateway: Gateway, request: Request) -> Response:
    """Answer `request` through `gateway` once the app has started its answer; a failure of the adapter itself
    still gets a problem+json 500."""
    try:
        return await _relay(gateway.app, request)
    except Exception:
        return adapter_failure(request)


async def _relay(app: ASGIApp, request: Request) -> Response:
    scope = {key: request.scope[key] for key in _FORWARDED_SCOPE if key in request.scope}
    started: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    body: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=_BUFFERED_MESSAGES)

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.set_result(message)
        elif message["type"] == "http.response.body":
            await body.put(message)

    async def run() -> None:
        try:
            await app(scope, request.receive, send)
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await body.put(None)

    task = asyncio.create_task(run())
    waited: set[asyncio.Future[Any]] = {started, task}
    done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    if started in done:
        return RelayedResponse(started.result(), body, task)
    started.cancel()
    task.result()  # what the app raised past its boundary, if anything, is the adapter's failure below
    logger.error("the gateway's app ended without answering %s", request.url.path)
    return adapter_failure(request, logged=True)


def adapter_failure(request: Request, *, logged: bool = False) -> Response:
    """A problem+json 500 for a request the adapter could not carry; the cause is logged with the request id."""
    request_id = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
    path: Any = request.scope.get("path") or None
    if not logged:
        logger.exception("request %s: the gateway adapter failed on %s %s", request_id, request.method, path)
    return JSONResponse(
        internal_error_document(request_id, path),
        status_code=500,
        media_type=PROBLEM_JSON,
        headers={"X-Request-Id": request_id},
    )
