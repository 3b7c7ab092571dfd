# intent_ref: platform.gateway
"""The Functions HTTP-stream adapter around an ASGI app: the answer streams as the app sends it, and no request
ends as an unhandled function exception."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.api.middleware import ErrorBoundary
from shared.api.problems import PROBLEM_JSON, client_gone, internal_error_document
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
_AHEAD_MESSAGES = 4
_AHEAD_BYTES = 256 * 1024
"""What the app may send ahead of the client: four body messages and 256 KiB (or one bigger message); a slow reader
slows the app down instead of filling memory."""
CLIENT_CLOSED_REQUEST = 499
"""The status handed to the host for a request whose client went away before its answer began: nobody reads it, and
it is no 5xx (an aborted upload is no failure of the app, and counted as one it would page the operator)."""


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


class _Body:
    """The app's body messages on their way to the client, a bounded few ahead of it; ended when the app has sent
    its last one, or dropped at once when the app gave up an answer it had begun."""

    def __init__(self) -> None:
        self._messages: deque[Message] = deque()
        self._bytes = 0
        self._done = False
        self._aborted = False
        self._added = asyncio.Event()
        self._taken = asyncio.Event()
        self._on_abort: Callable[[], None] | None = None

    async def put(self, message: Message) -> None:
        """Queue a body message of the app, once there is room for it."""
        size = len(message.get("body", b""))
        while self._messages and (len(self._messages) >= _AHEAD_MESSAGES or self._bytes + size > _AHEAD_BYTES):
            self._taken.clear()
            await self._taken.wait()
        if self._aborted:
            return
        self._messages.append(message)
        self._bytes += size
        self._added.set()

    async def get(self) -> Message | None:
        """The next message for the client; None after the last one (or once the answer was given up)."""
        while not self._messages:
            if self._done:
                return None
            self._added.clear()
            await self._added.wait()
        message = self._messages.popleft()
        self._bytes -= len(message.get("body", b""))
        self._taken.set()
        return message

    def end(self) -> None:
        """The app has sent all it will."""
        self._done = True
        self._added.set()

    def abort(self) -> None:
        """The app gave its answer up: what it left is dropped, and the relay stops, also in the middle of a write."""
        self._messages.clear()
        self._bytes = 0
        self._done = self._aborted = True
        self._added.set()
        self._taken.set()
        if self._on_abort is not None:
            self._on_abort()

    def on_abort(self, cut: Callable[[], None] | None) -> None:
        """What stops the relay when the answer is given up (now, if it was already)."""
        self._on_abort = cut
        if cut is not None and self._aborted:
            cut()


class RelayedResponse(Response):
    """The app's answer, started already: its status and headers are known, its body is passed on as it is sent."""

    def __init__(self, start: Message, body: _Body, app_task: asyncio.Task[None]) -> None:
        self.status_code = int(start["status"])
        self.raw_headers = list(start.get("headers", []))
        self.background = None
        self._start, self._body, self._app_task = start, body, app_task

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        loop = asyncio.get_running_loop()
        cut = asyncio.timeout(None)
        try:
            async with cut:
                # An answer the app gave up (an event stream whose client stopped reading) is not waited on: the
                # write under way is abandoned and the answer left unfinished, so the server closes the connection.
                self._body.on_abort(lambda: cut.reschedule(loop.time()))
                await send(self._start)
                while (message := await self._body.get()) is not None:
                    await send(message)
        except TimeoutError:
            if not cut.expired():
                raise
            logger.info("the gateway cut off an answer its app gave up: %r", scope.get("path"))
        finally:
            self._body.on_abort(None)
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
    body = _Body()
    completed = False

    async def send(message: Message) -> None:
        nonlocal completed
        if message["type"] == "http.response.start":
            started.set_result(message)
        elif message["type"] == "http.response.body":
            await body.put(message)
            completed = not message.get("more_body", False)

    async def run() -> None:
        try:
            await app(scope, request.receive, send)
        finally:
            if completed or not started.done():
                body.end()
            else:
                body.abort()  # it began an answer and left it unfinished (its client took nothing in time)

    task = asyncio.create_task(run())
    waited: set[asyncio.Future[Any]] = {started, task}
    done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    if started in done:
        return RelayedResponse(started.result(), body, task)
    started.cancel()
    task.result()  # what the app raised past its boundary, if anything, is the adapter's failure below
    if client_gone(scope):
        # The app found its client gone and sent nothing on purpose (logged at INFO where it was found).
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    # The paths logged are percent-decoded: quoted with their escapes, so a `%0A` cannot start a line of its own.
    logger.error("the gateway's app ended without answering %r", request.url.path)
    return adapter_failure(request, logged=True)


def adapter_failure(request: Request, *, logged: bool = False) -> Response:
    """A problem+json 500 for a request the adapter could not carry; the cause is logged with the request id."""
    request_id = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
    path: Any = request.scope.get("path") or None
    if not logged:
        logger.exception("request %s: the gateway adapter failed on %s %r", request_id, request.method, path)
    return JSONResponse(
        internal_error_document(request_id, path),
        status_code=500,
        media_type=PROBLEM_JSON,
        headers={"X-Request-Id": request_id},
    )
