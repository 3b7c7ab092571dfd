# intent_ref: platform.devhost
"""The devhost answers a request whose chunked body breaks after its handler began to read it (malformed framing,
or the connection's body ending mid-chunk) with a 400 problem, or closes cleanly when no client is left to read it;
it never leaves the request unanswered or the handler waiting; and an unhandled 500 is logged once, with its
request id and traceback together."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from devhost.child import PROJECT_ROOT
from devhost.http_functions import HostRunner, add_http_routes, host_problems
from devhost.invoker import Invoker
from devhost.loader import load_function_app

APP = PROJECT_ROOT / "tests" / "devhost_http_app"
WAIT_S = 30.0
"""The bound of every wait: a run that fails says what it waited for instead of hanging."""
BAD_REQUEST = "https://quantum-platform.dev/problems/bad-request"


@dataclass
class Handlers:
    """Which requests (by X-Request-Id) a handler has begun and finished, as the server's thread sees them."""

    begun: dict[str, threading.Event] = field(default_factory=dict)
    finished: dict[str, threading.Event] = field(default_factory=dict)
    released: threading.Event = field(default_factory=threading.Event)
    """What the holding route waits for."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, events: dict[str, threading.Event], request_id: str) -> threading.Event:
        with self.lock:
            return events.setdefault(request_id, threading.Event())

    def wait_begun(self, request_id: str) -> None:
        assert self.event(self.begun, request_id).wait(WAIT_S), f"no handler began {request_id} in {WAIT_S} s"

    def wait_finished(self, request_id: str) -> None:
        assert self.event(self.finished, request_id).wait(WAIT_S), (
            f"the handler of {request_id} was still waiting after {WAIT_S} s"
        )


@dataclass
class Host:
    """The running server, and what its handlers have done."""

    port: int
    handlers: Handlers
    loop: asyncio.AbstractEventLoop

    def settle(self) -> None:
        """Wait until the server has done all it does for the connections closed so far (their answers and logs)."""

        async def busy() -> list[str]:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while (tasks := _tasks()) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            return tasks

        busy_tasks = asyncio.run_coroutine_threadsafe(busy(), self.loop).result()
        assert not busy_tasks, f"the server still handled a closed connection after {WAIT_S} s: {busy_tasks}"


async def _read_text(request: web.Request) -> web.Response:
    """A component route that reads its body itself (as the durable API's do)."""
    return web.Response(text=str(len(await request.text())))


async def _unread(request: web.Request) -> web.Response:  # noqa: ARG001
    """A route that answers without reading its body (the server drains the rest)."""
    return web.Response(text="not read")


def _holding(handlers: Handlers) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A route that answers once the test releases it (a request still in flight while the next one arrives)."""

    async def hold(request: web.Request) -> web.Response:  # noqa: ARG001
        released = await asyncio.get_running_loop().run_in_executor(None, handlers.released.wait, WAIT_S)
        return web.Response(text="released" if released else "never released")

    return hold


async def _fail(request: web.Request) -> web.Response:  # noqa: ARG001
    raise RuntimeError("a handler that lets an exception out")


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """The host's runner (as devhost/host.py starts it) serving the devhost's own HTTP functions and routes like its
    components', on a loopback port, in a loop of its own thread."""
    loop = asyncio.new_event_loop()
    handlers = Handlers()
    ready: list[int] = []
    runner_box: list[HostRunner] = []
    invoker = Invoker(str(APP.resolve()))

    @web.middleware
    async def tracked(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # No suspension between the mark and the handler's first read: a test that saw the mark and sends more bytes
        # has them parsed only once the handler waits in its read (the loop runs one callback at a time).
        request_id = request.headers.get("X-Request-Id", "")
        handlers.event(handlers.begun, request_id).set()
        try:
            return await handler(request)
        finally:
            handlers.event(handlers.finished, request_id).set()

    async def start() -> None:
        app = web.Application(middlewares=[tracked, host_problems])
        app.router.add_post("/component/text", _read_text)
        app.router.add_post("/component/unread", _unread)
        app.router.add_get("/component/fail", _fail)
        app.router.add_get("/component/hold", _holding(handlers))
        add_http_routes(app, load_function_app(APP / "function_app.py").http, invoker, "api", None)
        runner = HostRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runner_box.append(runner)
        ready.append(runner.addresses[0][1])

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=WAIT_S)
    try:
        yield Host(ready[0], handlers, loop)
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(timeout=WAIT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=WAIT_S)
        loop.close()
        invoker.shutdown()


def _head(path: str, request_id: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {request_id}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()


def _read_all(sock: socket.socket, what: str) -> bytes:
    """Everything the server sends until it closes the connection, within WAIT_S."""
    sock.settimeout(WAIT_S)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"{what}: the devhost left the request unanswered for {WAIT_S} s (received {received!r})")
    return received


def _answer(received: bytes) -> tuple[int, dict[str, str], bytes]:
    assert received, "the devhost closed the connection without an answer"
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.decode().partition(":") for line in lines)}
    return int(status.split(b" ")[1]), headers, body


def _assert_body_refused(received: bytes, request_id: str, path: str, why: str) -> None:
    status, headers, body = _answer(received)
    assert status == 400, received
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"] == request_id
    # Where a next request would begin is unknown after a broken body: the connection ends with the answer.
    assert headers["connection"] == "close"
    problem: dict[str, Any] = json.loads(body)  # one answer: nothing follows the document
    assert problem == {
        "type": BAD_REQUEST,
        "title": "Bad request",
        "status": 400,
        "detail": f"the request body could not be read: {why}",
        "instance": path,
    }


READERS = ["/api/upload", "/api/upload-stream", "/component/text"]
"""A function with a body, an HTTP-stream function (as the gateway is), and a component route reading its own."""


@pytest.mark.parametrize("path", READERS)
def test_a_chunk_framing_broken_after_the_handler_began_reading_is_a_400_problem(host: Host, path: str) -> None:
    request_id = f"broken-framing{path.replace('/', '-')}"
    with socket.create_connection(("127.0.0.1", host.port), timeout=WAIT_S) as sock:
        sock.sendall(_head(path, request_id) + b"3\r\nabc\r\n")
        host.handlers.wait_begun(request_id)
        sock.sendall(b"not-a-size\r\n")
        received = _read_all(sock, "broken chunk framing")
    _assert_body_refused(received, request_id, path, "its chunked framing is malformed")
    host.handlers.wait_finished(request_id)


@pytest.mark.parametrize("path", READERS)
def test_a_body_ending_mid_chunk_is_a_400_problem_to_a_client_still_reading(host: Host, path: str) -> None:
    request_id = f"ended-mid-chunk{path.replace('/', '-')}"
    with socket.create_connection(("127.0.0.1", host.port), timeout=WAIT_S) as sock:
        sock.sendall(_head(path, request_id) + b"3\r\nabc\r\n")
        host.handlers.wait_begun(request_id)
        sock.sendall(b"5\r\nab")
        sock.shutdown(socket.SHUT_WR)  # the client's body ends here; it still reads
        received = _read_all(sock, "a body ending mid-chunk")
    _assert_body_refused(received, request_id, path, "the connection ended before the body did")
    host.handlers.wait_finished(request_id)


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("path", READERS)
def test_a_client_gone_mid_chunk_is_no_failure_of_the_host(
    host: Host, path: str, reset: bool, caplog: pytest.LogCaptureFixture
) -> None:
    request_id = f"gone-mid-chunk{path.replace('/', '-')}-{reset}"
    host.settle()
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", host.port), timeout=WAIT_S) as sock:
            sock.sendall(_head(path, request_id) + b"3\r\nabc\r\n")
            host.handlers.wait_begun(request_id)
            sock.sendall(b"5\r\nab")
            if reset:  # the close resets the connection instead of ending it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        host.handlers.wait_finished(request_id)
        host.settle()
    failures = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert failures == [], "a client that went away was logged as a failure of the host"


def test_a_body_its_handler_left_unread_breaking_after_the_answer_ends_the_connection_quietly(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    request_id = "broken-after-answer"
    host.settle()
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", host.port), timeout=WAIT_S) as sock:
            sock.sendall(_head("/component/unread", request_id) + b"3\r\nabc\r\n")
            host.handlers.wait_finished(request_id)
            sock.sendall(b"not-a-size\r\n")
            received = _read_all(sock, "a body broken while the server drained it")
        host.settle()
    status, headers, body = _answer(received)
    assert (status, body) == (200, b"not read"), received  # the one answer: no second one for the broken rest
    failures = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert failures == [], "the drain of an answered request's broken body was logged as a failure"


def test_a_pipelined_request_whose_body_breaks_before_its_handler_begins_is_answered_after_the_one_before(
    host: Host,
) -> None:
    held = b"GET /component/hold HTTP/1.1\r\nHost: x\r\nX-Request-Id: held\r\n\r\n"
    request_id = "broken-while-queued"
    host.handlers.released.clear()
    with socket.create_connection(("127.0.0.1", host.port), timeout=WAIT_S) as sock:
        # One write: the second request is parsed (its headers, its first chunk) before the first one's handler runs.
        sock.sendall(held + _head("/api/upload", request_id) + b"3\r\nabc\r\n")
        host.handlers.wait_begun("held")
        sock.sendall(b"not-a-size\r\n")  # the second request's body breaks while the first is in flight
        host.handlers.released.set()
        received = _read_all(sock, "a pipelined request whose body broke")
    answers = [b"HTTP/1.1 " + answer for answer in received.split(b"HTTP/1.1 ")[1:]]
    assert len(answers) == 2, f"both pipelined requests are to be answered, in order: {received!r}"
    first, second = answers
    status, _, body = _answer(first)
    assert (status, body) == (200, b"released")
    _assert_body_refused(second, request_id, "/api/upload", "its chunked framing is malformed")


def test_a_well_formed_chunked_body_is_still_served_on_a_kept_connection(host: Host) -> None:
    request_id = "whole-chunked"
    with socket.create_connection(("127.0.0.1", host.port), timeout=WAIT_S) as sock:
        sock.sendall(_head("/api/upload", request_id) + b"3\r\nabc\r\n")
        host.handlers.wait_begun(request_id)
        sock.sendall(b"2\r\nde\r\n0\r\n\r\n")
        host.handlers.wait_finished(request_id)
        sock.sendall(b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nfg")
        received = _read_all(sock, "two requests on one connection")
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 2, f"both requests on the kept connection are to be answered: {received!r}"
    first, second = answers
    assert first.startswith(b"200") and first.endswith(b"\r\n\r\n5"), received
    assert second.startswith(b"200") and second.endswith(b"\r\n\r\n2"), received


def test_an_unhandled_500_is_logged_once_with_its_request_id_and_traceback(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    request = b"GET /component/fail HTTP/1.1\r\nHost: x\r\nX-Request-Id: logged-once\r\nConnection: close\r\n\r\n"
    host.settle()
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", host.port), timeout=WAIT_S) as sock:
            sock.sendall(request)
            received = _read_all(sock, "an unhandled 500")
        host.settle()
    status, headers, body = _answer(received)
    assert status == 500
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["request_id"] == "logged-once"
    failures = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in failures] == [
        "request logged-once: GET /component/fail failed unexpectedly"
    ], "the 500 is to be logged once, by its request id"
    exc_info = failures[0].exc_info
    assert exc_info is not None and isinstance(exc_info[1], RuntimeError), "the traceback is to go with the id"


def _tasks() -> list[str]:
    """The loop's tasks other than the caller's."""
    return [repr(task.get_coro()) for task in asyncio.all_tasks() if task is not asyncio.current_task()]
