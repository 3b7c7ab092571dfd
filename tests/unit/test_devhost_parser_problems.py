# intent_ref: platform.devhost
"""The devhost's server answers a request its HTTP parser refuses (a malformed request line or header, a line over
the size limit, broken chunked framing) with problem+json, as every other error of the API, never text/plain."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from devhost.http_functions import HostRunner, host_problems


async def _upload(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


async def _fail(request: web.Request) -> web.Response:  # noqa: ARG001
    raise RuntimeError("a handler that lets an exception out")


async def _time_out(request: web.Request) -> web.Response:  # noqa: ARG001
    raise TimeoutError("a handler whose wait ran out")  # the server answers it 504


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """The host's runner (as devhost/host.py starts it) on a loopback port, in a loop of its own thread."""
    loop = asyncio.new_event_loop()
    ready: list[int] = []
    runner_box: list[HostRunner] = []

    async def start() -> None:
        app = web.Application(middlewares=[host_problems])
        app.router.add_post("/api/upload", _upload)
        app.router.add_get("/api/probe", _upload)
        app.router.add_get("/api/fail", _fail)
        app.router.add_get("/api/slow", _time_out)
        runner = HostRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runner_box.append(runner)
        ready.append(runner.addresses[0][1])

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield ready[0]
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def _exchange(port: int, *parts: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (each part in its own write) on a fresh connection; status, headers and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for part in parts:
            sock.sendall(part)
        received = b""
        # Until the answer is whole: a refusal after the handler began may keep the connection open.
        while not _whole(received) and (chunk := sock.recv(65536)):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.decode().partition(":") for line in lines)}
    return int(status.split(b" ")[1]), headers, body


def _whole(received: bytes) -> bool:
    """Whether `received` holds a head and the whole body its Content-Length announces."""
    head, found, body = received.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


MALFORMED = {
    "request-line": (b"GARBAGE\r\n\r\n", "The request line is malformed."),
    "method": (b"G\x01T /api/probe HTTP/1.1\r\nHost: x\r\n\r\n", "The request line is malformed."),
    "header": (b"GET /api/probe HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", None),
    "oversize-header": (
        b"GET /api/probe HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        "The request line or a header field is longer than the host accepts.",
    ),
    "chunk-size": (
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
        None,
    ),
    "length-and-chunked": (
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        None,
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_request_the_parser_refuses_is_a_400_problem(port: int, case: str) -> None:
    request, detail = MALFORMED[case]
    status, headers, body = _exchange(port, request)
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"]
    problem: dict[str, Any] = json.loads(body)
    assert problem["type"] == "https://quantum-platform.dev/problems/bad-request"
    assert problem["title"] == "Bad request"
    assert problem["status"] == 400
    assert problem["detail"] == (detail or problem["detail"])
    # The parser's own message quotes the refused bytes; the answer does not.
    assert b"aaaa" not in body and "Bad Header" not in problem["detail"] and "ZZ" not in problem["detail"]


def test_broken_chunk_framing_after_the_headers_is_a_400_problem(port: int) -> None:
    head = b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    # One write: the framing is refused by the parser before any handler runs. (Sent after the handler has begun to
    # read, the handler's read fails instead: tests/unit/test_devhost_broken_body.py.)
    status, headers, body = _exchange(port, head + b"3\r\nabc\r\nnot-a-size\r\n")
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 400


def test_an_exception_no_handler_answered_is_a_500_problem_with_the_request_id(port: int) -> None:
    status, headers, body = _exchange(
        port, b"GET /api/fail HTTP/1.1\r\nHost: x\r\nX-Request-Id: parse-500\r\nConnection: close\r\n\r\n"
    )
    assert status == 500
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"] == "parse-500"
    problem = json.loads(body)
    assert problem["type"] == "https://quantum-platform.dev/problems/internal-error"
    assert problem["request_id"] == "parse-500"
    assert "RuntimeError" not in body.decode()


def test_an_unhandled_500_logs_the_request_id_its_document_says_to_quote(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="devhost.http_functions"):
        status, _, _ = _exchange(
            port, b"GET /api/fail HTTP/1.1\r\nHost: x\r\nX-Request-Id: logged-500\r\nConnection: close\r\n\r\n"
        )
    assert status == 500
    assert any("logged-500" in record.getMessage() for record in caplog.records)


def test_a_5xx_other_than_500_keeps_its_status_in_the_problem(port: int) -> None:
    status, headers, body = _exchange(
        port, b"GET /api/slow HTTP/1.1\r\nHost: x\r\nX-Request-Id: parse-504\r\nConnection: close\r\n\r\n"
    )
    assert status == 504
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"] == "parse-504"
    problem = json.loads(body)
    assert problem["status"] == 504
    assert problem["title"] == "Gateway timeout"
    assert problem["type"] == "https://quantum-platform.dev/problems/gateway-timeout"
    assert "request_id" not in problem


def test_a_well_formed_request_is_served(port: int) -> None:
    request = b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    status, _, body = _exchange(port, request + b"3\r\nabc\r\n0\r\n\r\n")
    assert (status, body) == (200, b"3")


def test_a_refused_request_is_logged_as_one_line_that_quotes_none_of_its_bytes(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # The parser's message quotes the refused line: a token in an over-long Authorization header would be logged.
    token = b"Bearer eyJzZWNyZXQiOiJub3QtaW4tbG9ncyJ9." + b"s" * 9000
    with caplog.at_level(logging.DEBUG):
        status, _, _ = _exchange(port, b"GET /api/probe HTTP/1.1\r\nHost: x\r\nAuthorization: " + token + b"\r\n\r\n")
    assert status == 400
    logged = [record for record in caplog.records if record.name.startswith(("aiohttp", "devhost"))]
    assert logged, "the refusal was not logged at all"
    for record in logged:
        assert "eyJzZWNyZXQi" not in record.getMessage() and record.exc_info is None, record.getMessage()
        assert record.levelno <= logging.WARNING
