# intent_ref: platform.devhost
"""Serve HTTP-triggered functions: aiohttp request -> Datum('http') -> function -> HTTP response, or, for an
HTTP-stream function (its request parameter is a starlette/FastAPI Request), the request object in and the
function's response streamed out as it is produced."""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from azure.functions import meta

from devhost.http_streams import BODY_GONE, FUNCTIONS_HOST_MAX_BODY, is_stream_function, read_body, serve_stream
from devhost.invoker import FunctionInvocationError, Invoker
from devhost.loader import function_name, trigger_of
from shared.api.problems import PROBLEM_JSON, internal_error_document, problem_document
from shared.api.request_ids import REQUEST_ID_HEADER, choose_request_id

logger = logging.getLogger(__name__)

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
BindingJson = Callable[[str], str]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TITLES = {413: "Payload too large"}
"""Titles where the API's own differs from the reason phrase (shared/api/middleware.py's body limit)."""


def aiohttp_path(route_prefix: str, route: str) -> str:
    """Translate a Functions route template into an aiohttp path ({*x}, {x:int}, {x?} included)."""
    path = re.sub(r"\{\*(\w+)\}", r"{\1:.*}", route)
    path = re.sub(r"\{(\w+):(?:int|long)\}", r"{\1:-?\\d+}", path)
    path = re.sub(r"\{(\w+):alpha\}", r"{\1:[A-Za-z]+}", path)
    path = re.sub(r"\{(\w+):guid\}", r"{\1:[0-9A-Fa-f-]+}", path)
    path = re.sub(r"\{(\w+)\?\}", r"{\1:[^/]*}", path)
    # Any other constraint (bool, datetime, regex, ...) is not checked locally: the function validates.
    path = re.sub(r"\{(\w+):(?!\.\*|-\?|\[)[^}]*\}", r"{\1}", path)
    prefix = f"/{route_prefix}" if route_prefix else ""
    return f"{prefix}/{path.lstrip('/')}"


async def _http_datum(request: web.Request, body_cap: int) -> meta.Datum:
    body = await read_body(request, body_cap)
    return meta.Datum(
        type="http",
        value={
            "method": meta.Datum(request.method, "string"),
            "url": meta.Datum(str(request.url), "string"),
            "headers": {k.lower(): meta.Datum(v, "string") for k, v in request.headers.items()},
            "params": {k: meta.Datum(v, "string") for k, v in request.match_info.items()},
            "query": {k: meta.Datum(v, "string") for k, v in request.query.items()},
            "body": meta.Datum(body, "bytes"),
        },
    )


def _to_response(out: meta.Datum | None) -> web.Response:
    if out is None:
        return web.Response(status=204)
    if out.type != "http":
        return web.Response(text="" if out.value is None else str(out.value), content_type="text/plain")
    value: dict[str, Any] = out.value
    headers = {k: str(h.value) for k, h in value.get("headers", {}).items()}
    body = value.get("body")
    payload = b"" if body is None or body.value is None else body.value
    if isinstance(payload, str):
        payload = payload.encode()
    headers.pop("Content-Length", None)
    headers.pop("content-length", None)
    return web.Response(status=int(value["status_code"].value), body=payload, headers=headers)


def make_handler(
    function: func.Function, invoker: Invoker, durable_binding: BindingJson | None, *, body_cap: int
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler that invokes `function` as the Functions host would, on a request body of at most
    `body_cap` bytes (`read_body`)."""
    trigger = trigger_of(function)
    client_bindings = [b.name for b in function.get_bindings() if b.type == "durableClient"]
    streams = is_stream_function(function, trigger.name)

    async def handle(request: web.Request) -> web.StreamResponse:
        if client_bindings and durable_binding is None:
            raise web.HTTPServiceUnavailable(text="durable functions are not enabled in this host")
        try:
            inputs: dict[str, meta.Datum] = {}
            if durable_binding is not None:
                origin = f"{request.scheme}://{request.host}"
                for name in client_bindings:
                    inputs[name] = meta.Datum(durable_binding(origin), "string")
            if streams:
                return await serve_stream(request, function, invoker, trigger.name, inputs, body_cap=body_cap)
            inputs[trigger.name] = await _http_datum(request, body_cap)
            out = await invoker.invoke(function, inputs, trace_parent=request.headers.get("traceparent", ""))
            return _to_response(out)
        except web.HTTPException:
            raise  # the host's own answers (413 over its body cap, 400 undecodable body), shaped by host_problems
        except FunctionInvocationError as exc:
            return failure_response(request, f"Executed '{exc.function_name}' (Failed): {exc.friendly}", exc.exc)
        except Exception as exc:  # the host's own translation failed: still an answer, never aiohttp's text page
            return failure_response(request, f"Executing '{function_name(function)}' failed in the host", exc)

    return handle


def failure_response(request: web.Request, what: str, exc: BaseException) -> web.Response:
    """A problem+json 500 carrying the request id, with the cause logged under that id.

    The real host answers an empty 500 here; the gateway never lets an exception out (functions/http_api.py), so
    locally a failure is made as legible as every other error of the API instead of mirroring that emptiness.
    """
    request_id = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
    logger.error("request %s: %s", request_id, what, exc_info=exc)
    body = json.dumps(internal_error_document(request_id, request.path)).encode()
    return web.Response(status=500, body=body, headers={"Content-Type": PROBLEM_JSON, "X-Request-Id": request_id})


@web.middleware
async def host_problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer the host's own errors on a request that reached routing (no route for the path, a method the route
    does not take, a body over the host's cap) as problem+json, the shape of every other error of the API, instead
    of aiohttp's text/plain pages."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return host_problem(request, exc)
    except web.RequestPayloadError as exc:
        # A body that broke off, read by any route (a component's too), is the client's fault: never a 500.
        return host_problem(request, web.HTTPBadRequest(text=f"the request body could not be read: {exc}"))
    except ConnectionError:
        if not isinstance(request.content.exception(), ConnectionError):
            raise  # not the client's connection (a service the route called): a failure of the host
        # The client went away in the middle of its body: nothing failed, and the answer's write fails quietly.
        logger.debug("client of %s %s went away mid-body", request.method, request.path)
        return host_problem(request, web.HTTPBadRequest(text=BODY_GONE))


def host_problem(request: web.Request, exc: web.HTTPException) -> web.Response:
    """The problem+json form of aiohttp's error `exc`: its status and headers (a 405's Allow), the API's title and
    type for the status, and as detail the reason phrase or the host's own text (a 413's sizes, a 503's cause)."""
    title = _TITLES.get(exc.status) or exc.reason[:1] + exc.reason[1:].lower()
    default_text = f"{exc.status}: {exc.reason}"
    detail = exc.reason if exc.text in (None, default_text) else exc.text
    document = problem_document(exc.status, title.lower().replace(" ", "-"), title, detail, instance=request.path)
    headers = exc.headers.copy()
    for name in ("Content-Type", "Content-Length"):
        headers.popall(name, None)
    headers["Content-Type"] = PROBLEM_JSON
    headers[REQUEST_ID_HEADER] = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
    answer = web.Response(status=exc.status, body=json.dumps(document).encode(), headers=headers)
    if request.content.exception() is not None:
        # The body broke off: where a next request would begin is unknown, so the connection ends with this answer.
        answer.force_close()
    return answer


_NOT_HTTP = "The request is not well-formed HTTP/1.1 (its request line, header fields or body framing)."
_PARSE_DETAILS: tuple[tuple[type[BaseException], str], ...] = (
    (LineTooLong, "The request line or a header field is longer than the host accepts."),
    (BadStatusLine, "The request line is malformed."),
)
"""What a refused request is told, by the parser's exception: fixed texts, never the parser's own message, which
quotes the raw bytes it choked on."""
_SERVER_DETAILS = {504: "The request was not answered in time."}
"""What the host says of its own 5xx answers other than a 500, by status (else the status's reason phrase)."""
_BROKEN_FRAMING = "its chunked framing is malformed"
_ENDED_EARLY = "the connection ended before the body did"
"""Why a body in flight broke (fixed texts: the parser's own message quotes the bytes it refused)."""
_REFUSED_BODY = frozenset({408, 413})
"""Answers that refuse a request's body before it was all read: the rest of it is not read at all."""


class ProblemRequestHandler(RequestHandler):
    """The host's connection protocol, whose own answers (a request the HTTP parser refuses: a malformed request
    line or header, one over the size limits, broken chunked framing; or an error no handler answered) are
    problem+json like every other error of the API instead of the server's text/plain pages.

    A body that breaks once its request was handed to a handler (its chunked framing refused by the parser, or the
    connection ending before it does) fails that handler's read, which answers 400, and the connection ends after
    that request: the server itself would leave the read waiting for ever and queue a second answer that no request
    asked for."""

    __slots__ = ("_body", "_body_broken", "_body_handled")

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._body: StreamReader | None = None
        """The body the parser feeds: the last request's, complete once it is at its end."""
        self._body_broken = False
        """Whether that body broke: nothing after it on the connection is read, and the connection ends after it."""
        self._body_handled = False
        """Whether that request's handler has returned (only the server's drain of an unread rest reads on)."""
        handler = self._request_handler
        assert handler is not None  # noqa: S101  # set from the server, as the base class's own start() asserts

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            try:
                answer = await handler(request)
            finally:
                if request.content is self._body:
                    self._body_handled = True
                    if self._body_broken:
                        self.close()  # after this request's answer (one pipelined before it is answered first)
            body = self._body
            if request.content is body and body is not None and not body.is_eof() and not self._body_broken:
                if answer.status in _REFUSED_BODY and isinstance(answer, web.Response) and not answer.prepared:
                    await self._refuse_unread_body(request, answer)
            return answer

        self._request_handler = handle

    def data_received(self, data: bytes) -> None:
        if self._body_broken:
            return  # where a next request would begin is unknown
        queued = len(self._messages)
        super().data_received(data)
        for entry in list(itertools.islice(self._messages, queued, None)):
            message, payload = entry
            if not isinstance(message, _ErrInfo):
                self._body, self._body_handled = payload, False
            elif self._body is not None and not self._body.is_eof():
                # The parser was inside the body of a request already handed on: what it refused is that body, whose
                # handler answers it, not a request of its own.
                self._messages.remove(entry)
                self._break_body(_BROKEN_FRAMING, message.exc)

    # True keeps the transport open (asyncio.Protocol's contract), which the base class narrowed to None.
    def eof_received(self) -> bool | None:  # type: ignore[override]
        if self._body is None or self._body.is_eof():
            super().eof_received()
            return None  # the transport closes
        # The client stopped sending in the middle of a body: it may still read the answer that refuses it.
        self._break_body(_ENDED_EARLY, None)
        return True

    async def _refuse_unread_body(self, request: web.BaseRequest, answer: web.Response) -> None:
        """Answer a body refused before it was all read (over the cap) without reading the rest of it: the server would
        drain it after the answer through the parser, inflating a compressed one to its very end. What still comes
        is dropped unparsed until the client closes (or the server's lingering time ends); the answer is sent and the
        sending side closed first, so that the client has it whole and the close does not reset it away."""
        self._body_broken = True
        answer.force_close()
        self.resume_reading()  # flow control paused it; what arrives now is dropped (data_received)
        await answer.prepare(request)
        await answer.write_eof()
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()

    def _break_body(self, reason: str, cause: BaseException | None) -> None:
        """End the body in flight as broken: its reader fails (RequestPayloadError) instead of waiting for bytes that
        will not come, the server does not drain it, and the connection closes after its request's answer."""
        body = self._body
        assert body is not None  # noqa: S101  # called only for a body in flight
        self._body_broken = True
        if self._body_handled:
            self.close()  # answered already: the server was draining the rest
        else:
            failure = web.RequestPayloadError(reason)
            failure.__cause__ = cause
            body.set_exception(failure)
        # At its end, so that the server's drain of a body its handler did not read stops at once.
        body.feed_eof()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A request the parser refused is the client's fault: one WARNING line naming its kind, not an ERROR with a
        traceback and the parser's message, which quotes the offending line (an Authorization header's token)."""
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            logger.warning("a malformed request was refused %s (%s)", exc.code, type(exc).__name__)
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
        if status == 500:
            # Logged once, here: the document tells the user to quote this id, so the traceback goes with it (the base
            # class would log it apart, without the id).
            logger.error(
                "request %s: %s %s failed unexpectedly%s",
                request_id,
                request.method,
                request.path,
                "" if exc is not None else " (no exception)",
                exc_info=exc,
            )
            if request.writer.output_size > 0:  # as the base class: bytes of another answer went out already
                raise ConnectionError("Response is sent already, cannot send another response with the error message")
            document = internal_error_document(request_id, request.path)
        else:
            # The base class logs the failure and refuses once bytes of another answer went out; its page is not used.
            plain = super().handle_error(request, status, exc, message)
            title = _TITLES.get(status) or plain.reason[:1] + plain.reason[1:].lower()
            if status > 500:
                # Another 5xx (a 504 for a handler that timed out) keeps its own status in the body, as the answer's.
                detail = _SERVER_DETAILS.get(status, plain.reason)
            else:
                detail = next((text for kind, text in _PARSE_DETAILS if isinstance(exc, kind)), _NOT_HTTP)
            document = problem_document(status, title.lower().replace(" ", "-"), title, detail, instance=request.path)
        answer = web.Response(
            status=status,
            body=json.dumps(document).encode(),
            headers={"Content-Type": PROBLEM_JSON, REQUEST_ID_HEADER: request_id},
        )
        # As the base class does: after a parse error the connection's framing cannot be trusted.
        answer.force_close()
        return answer


class _ProblemServer(web.Server):
    """The server whose connections are ProblemRequestHandlers."""

    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class HostRunner(web.AppRunner):
    """The host's app runner: an AppRunner whose server answers its own errors as problem+json."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _ProblemServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


def add_http_routes(
    app: web.Application,
    functions: list[func.Function],
    invoker: Invoker,
    route_prefix: str,
    durable_binding: BindingJson | None,
    *,
    body_cap: int = FUNCTIONS_HOST_MAX_BODY,
) -> list[str]:
    """Register every HTTP function, whose request bodies are read up to `body_cap` bytes (`host_body_cap`; else
    the Functions host's own cap); catch-all routes go last so specific ones win. Returns the paths."""
    ordered = sorted(functions, key=lambda f: "{*" in (trigger_of(f).route or ""))
    paths = []
    for function in ordered:
        trigger = trigger_of(function)
        path = aiohttp_path(route_prefix, str(trigger.route or function_name(function)))
        methods = [str(getattr(m, "value", m)).upper() for m in (trigger.methods or ALL_METHODS)]
        handler = make_handler(function, invoker, durable_binding, body_cap=body_cap)
        for method in methods:  # HEAD too: add_route("GET") registers none
            app.router.add_route(method, path, handler)
        paths.append(path)
    return paths
