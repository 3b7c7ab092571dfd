# intent_ref: platform.devhost
"""HTTP-stream functions, as the Python worker serves them: the function gets a starlette Request over the client's
request and returns a Response, which is sent to the client as it produces its body (server-sent events)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.functions import meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from devhost.invoker import FunctionInvocationError, Invoker, type_hints
from devhost.loader import function_name

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.1
"""How often a receive that waits for the client's disconnect looks at the connection."""
BODY_GONE = "the request body could not be read: the client closed the connection"
"""The refusal of a body whose client went away (written to nobody: the answer's write fails quietly)."""
BODY_GRACE_S = 5.0
BODY_MIN_BYTES_PER_S = 240
"""The slowest a request body may come, as the Functions host's server (Kestrel) allows by default: any rate for the
first BODY_GRACE_S, then on average BODY_MIN_BYTES_PER_S; slower, it is answered 408 and its connection closed,
instead of holding the connection (and the function's turn) for as long as the client likes."""
_SLOW_BODY = "the request body came too slowly: {} bytes of it were received"
STREAM_WRITE_AHEAD = 16 * 1024
"""The most of a streamed answer the host keeps unsent in its own buffer (besides the message being written): a body
write returns once the rest of it is under this, so an answer goes on only as its client takes what was sent, and a
client that stops reading holds its answer's function at its next message instead of letting the host buffer it."""
STREAM_SEND_BUFFER = 64 * 1024
"""The kernel's send buffer of a connection that carries a streamed answer (asked of the socket; the kernel doubles
it for its own bookkeeping): left to itself, the loopback grows it to megabytes, which a client that does not read
fills with what the function takes as sent, and which then delays its stall cut-off by as much."""
FUNCTIONS_HOST_MAX_BODY = 100 * 1024 * 1024
"""The Functions host's own request cap: the cap of the host's component routes (the Durable API takes the
orchestration inputs the app's Durable client sends, which may be several times the request that caused them), and
of an HTTP function's body where the host is not told the app's (devhost/host.py's `host_body_cap`)."""


def is_stream_function(function: func.Function, trigger_name: str) -> bool:
    """Whether the function takes its HTTP request as a starlette/FastAPI Request (the worker's HTTP streams)."""
    hint = type_hints(function.get_user_function()).get(trigger_name)
    return inspect.isclass(hint) and issubclass(hint, Request)


async def read_body(request: web.Request, cap: int) -> bytes:
    """An HTTP function's request body, decoded as its Content-Encoding says, and at most `cap` bytes of it (decoded
    bytes counted; devhost/host.py's `host_body_cap`): over it, HTTPRequestEntityTooLarge (a 413 problem,
    `host_problems`) before more is read or inflated. HTTPRequestTimeout (a 408 problem) when it comes slower than
    BODY_MIN_BYTES_PER_S after BODY_GRACE_S; HTTPBadRequest (a 400 problem) when it does not decode or breaks off:
    the client's fault, never the 500 an escaping payload error would be answered with. Every refusal before the
    body's end closes the connection (`ProblemRequestHandler`).

    The cap is the function's, not the application's `client_max_size`: the host's component routes (the Durable
    API) keep the Functions host's own cap."""
    if request.content_length is not None and request.content_length > cap:
        raise web.HTTPRequestEntityTooLarge(cap, request.content_length)  # refused before a byte of it is read
    # Read piece by piece rather than with `request.read()`, which first raises the parser's read-ahead (and so each
    # single inflation step) to the whole cap: here the parser inflates a compressed body a step at a time, and the
    # read stops once the body read so far is over the cap.
    body = bytearray()
    started = asyncio.get_running_loop().time()
    try:
        while True:
            try:
                # The whole body so far must have come at the minimum rate, after the grace period.
                async with asyncio.timeout_at(started + BODY_GRACE_S + len(body) / BODY_MIN_BYTES_PER_S):
                    chunk = await request.content.readany()
            except TimeoutError:
                raise web.HTTPRequestTimeout(text=_SLOW_BODY.format(len(body))) from None
            if not chunk:
                return bytes(body)
            body.extend(chunk)
            if len(body) > cap:
                raise web.HTTPRequestEntityTooLarge(cap, len(body))
    except web.RequestPayloadError as exc:
        raise web.HTTPBadRequest(text=f"the request body could not be read: {exc}") from None
    except ConnectionError:
        # The client went away in the middle of its body: nobody is left to answer, and nothing failed in the host
        # (the refusal's write fails quietly on the closed connection).
        logger.debug("client of %s %s went away mid-body", request.method, request.path)
        raise web.HTTPBadRequest(text=BODY_GONE) from None


def _scope(request: web.Request) -> dict[str, Any]:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    # The request target's bytes as the client sent them (the parser decoded them as UTF-8, surrogates escaped), as
    # the worker gets the raw URL from the Functions host: aiohttp's `query_string` is percent-decoded text, which
    # read a valid `caf%C3%A9` as other bytes and could not be encoded at all above U+00FF.
    raw_path, _, raw_query = (part.encode("utf-8", "surrogateescape") for part in request.raw_path.partition("?"))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": raw_path,
        "query_string": raw_query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": tuple(peer[:2]) if peer else None,
        "server": tuple(sock[:2]) if sock else None,
        "path_params": dict(request.match_info),
    }


async def serve_stream(
    request: web.Request,
    function: func.Function,
    invoker: Invoker,
    trigger_name: str,
    inputs: dict[str, meta.Datum],
    *,
    body_cap: int = FUNCTIONS_HOST_MAX_BODY,
) -> web.StreamResponse:
    """Invoke the HTTP-stream `function` on `request`, its body read up to `body_cap` (`read_body`), and send its
    response as it is produced.

    Raises FunctionInvocationError when the function raises before answering (the caller answers a problem 500).
    """
    body = await read_body(request, body_cap)
    disconnected = asyncio.Event()
    body_sent = False

    def hung_up() -> bool:
        # aiohttp closes the transport when the client's side ends (EOF or reset), and lets the handler run on.
        transport = request.transport
        return transport is None or transport.is_closing()

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # Asked without waiting first, so `Request.is_disconnected()` (a receive cancelled at its first wait) sees a
        # client that hung up while the app waited, as uvicorn's receive shows it in the Python worker; a listener
        # that waits here hears it within DISCONNECT_POLL_S (aiohttp has no public hook for a closed connection).
        while not disconnected.is_set() and not hung_up():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DISCONNECT_POLL_S):
                    await disconnected.wait()
        disconnected.set()
        return {"type": "http.disconnect"}

    native = {trigger_name: Request(_scope(request), receive)}
    result = await invoker.call(function, inputs, trace_parent=request.headers.get("traceparent", ""), native=native)
    if not isinstance(result, Response):
        raise FunctionInvocationError(
            function_name(function), TypeError(f"an HTTP-stream function returned {type(result).__name__}")
        )
    response: web.StreamResponse | None = None
    ended = False

    async def send(message: Message) -> None:
        nonlocal response, ended
        try:
            if message["type"] == "http.response.start":
                response = web.StreamResponse(status=int(message["status"]))
                for name, value in message.get("headers", []):
                    response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
                _hold_little(request)
                await response.prepare(request)
            elif message["type"] == "http.response.body" and response is not None:
                if request.method != "HEAD":  # its headers only: a body after them would break the connection's framing
                    await response.write(message.get("body", b""))
                    # The server's writer waits for its client only every 64 KiB written: without this, small
                    # messages (keep-alives) pile up in the host for a client that takes nothing, and the function
                    # never sees it stall.
                    await request.writer.drain()
                if not message.get("more_body", False):
                    await response.write_eof()
                    ended = True
        except (ConnectionError, RuntimeError) as exc:  # the client went away: the response stops being produced
            disconnected.set()
            raise OSError("the client disconnected") from exc

    try:
        await result(dict(_scope(request)), receive, send)
    except OSError:
        logger.debug("client of %s %s went away mid-response", request.method, request.path)
    except Exception as exc:
        if response is None:  # nothing sent yet: the caller still answers with a problem body
            raise FunctionInvocationError(function_name(function), exc) from exc
        logger.exception("the response of %s %s failed after it started", request.method, request.path)
    finally:
        disconnected.set()
    if response is None:
        raise FunctionInvocationError(function_name(function), RuntimeError("the response never started"))
    if not ended:
        _cut_off(request)
    return response


def _hold_little(request: web.Request) -> None:
    """Bound what a streamed answer's connection holds unsent: the host's buffer (STREAM_WRITE_AHEAD) and the
    kernel's (STREAM_SEND_BUFFER)."""
    transport = request.transport
    if transport is None:
        return
    transport.set_write_buffer_limits(high=STREAM_WRITE_AHEAD)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)


def _cut_off(request: web.Request) -> None:
    """Close the connection of an answer its function left unfinished (it gave up on a client that took nothing,
    or failed midway), dropping what is still unsent, as the worker's server does: the server would otherwise finish
    the answer itself, so that its client took a cut-off stream for a complete one, and wait, for as long as the
    client likes, to hand it what the host and the kernel hold for it."""
    transport = request.transport
    if transport is not None and not transport.is_closing():
        logger.info("the answer of %s %s was left unfinished: its connection is closed", request.method, request.path)
        transport.abort()
