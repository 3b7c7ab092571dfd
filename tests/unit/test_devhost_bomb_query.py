# intent_ref: platform.devhost
"""The devhost reads (and inflates) no more of a request body than the app's body limit and a margin, answering a
larger one 413 problem+json; it hands an HTTP-stream function the query string as the client sent it; and the app
answers query text that is not UTF-8 with a 422 problem before its telemetry span can fail on it."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.requests import Request

from devhost import http_streams
from devhost.child import PROJECT_ROOT
from devhost.host import DevHost, HostOptions, host_body_cap
from devhost.http_functions import HostRunner
from devhost.http_streams import _scope
from devhost.loader import load_function_app
from shared.api import app as api_app
from shared.api.adapter import asgi_gateway
from shared.config import get_settings

APP = PROJECT_ROOT / "tests" / "devhost_http_app"
WAIT_S = 30.0
"""The bound of every wait: a run that fails says what it waited for instead of hanging."""
LIMIT = 1024 * 1024
"""The app's body limit in these tests (QP_MAX_BODY_BYTES, its default)."""
CAP = host_body_cap(LIMIT)
BOMB_SIZE = 64 * 1024 * 1024
"""What the compressed body (64 KiB) inflates to: sixty times the cap, under the Functions host's own 100 MiB."""
IN_FLIGHT = 2 * 1024 * 1024
"""What the parser may have inflated past the read when the read stops: it inflates a step (256 KiB) at a time, a
few steps ahead of the reader."""


def _bomb() -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    chunk = b"\0" * (1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(BOMB_SIZE >> 20)) + packer.flush()


def _settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid app settings; nothing here connects to what they name."""
    monkeypatch.setenv("QP_DATABASE_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.delenv("QP_BLOB_ACCOUNT_URL", raising=False)


@dataclass
class Host:
    port: int
    inflated: list[int]
    """Body bytes the server's parser has handed to request bodies (decoded), since the test began."""


@pytest.fixture()
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Host]:
    """The host's own aiohttp app (devhost/host.py's web_app, components' routes included) on a loopback port, in a
    loop of its own thread, for an app whose body limit is LIMIT; every body byte the parser feeds is counted."""
    _settings(monkeypatch)
    monkeypatch.setenv("QP_MAX_BODY_BYTES", str(LIMIT))
    monkeypatch.delenv("FUNCTIONS_WORKER_PROCESS_COUNT", raising=False)  # functions run in the host
    get_settings.cache_clear()
    inflated = [0]
    feed = streams.StreamReader.feed_data

    def counting_feed(self: streams.StreamReader, data: bytes, *args: Any) -> Any:
        inflated[0] += len(data)
        return feed(self, data, *args)

    monkeypatch.setattr(streams.StreamReader, "feed_data", counting_feed)
    devhost = DevHost(
        HostOptions(app_dir=APP, data_dir=tmp_path, port=0),
        load_function_app(APP / "function_app.py"),
        "host=/nonexistent dbname=none",
    )
    loop = asyncio.new_event_loop()
    runners: list[HostRunner] = []

    async def start() -> int:
        runner = HostRunner(devhost.web_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=WAIT_S)
        yield Host(port, inflated)
    finally:
        if runners:
            asyncio.run_coroutine_threadsafe(runners[0].cleanup(), loop).result(timeout=WAIT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=WAIT_S)
        loop.close()
        devhost.invoker.shutdown()
        get_settings.cache_clear()


def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection; the answer, read until the server closes (within WAIT_S)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pytest.fail(f"the devhost left the request unanswered for {WAIT_S} s (received {received!r})")
    assert received, "the devhost closed the connection without an answer"
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.decode().partition(":") for line in lines)}
    return int(status.split(b" ")[1]), headers, body


def _assert_too_large(status: int, headers: dict[str, str], body: bytes, path: str) -> None:
    assert status == 413, body[:300]
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"]
    problem = json.loads(body)
    assert problem["type"] == "https://quantum-platform.dev/problems/payload-too-large"
    assert problem["status"] == 413
    assert problem["detail"] == f"Maximum request body size {CAP} exceeded."
    assert problem["instance"] == path


@pytest.mark.parametrize("path", ["/api/upload", "/api/upload-stream"])
def test_a_compressed_body_is_inflated_no_further_than_the_cap(host: Host, path: str) -> None:
    bomb = _bomb()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(bomb)}\r\nConnection: close\r\n\r\n"
    ).encode()
    _assert_too_large(*_exchange(host.port, head + bomb), path)
    # Was the whole 64 MiB inflated and handed to the function (up to the Functions host's 100 MiB); and a read
    # stopped at the cap still had the server drain (inflate) the rest of the body after the answer.
    assert host.inflated[0] <= CAP + IN_FLIGHT, f"{host.inflated[0]} bytes inflated for a cap of {CAP}"


@pytest.mark.parametrize("path", ["/api/upload", "/api/upload-stream"])
def test_a_body_declared_over_the_cap_is_refused_before_it_is_sent(host: Host, path: str) -> None:
    # Only the head is sent: the refusal must not wait for a body it will not read.
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {CAP + 1}\r\nConnection: close\r\n\r\n".encode()
    _assert_too_large(*_exchange(host.port, head), path)
    assert host.inflated[0] == 0


def test_a_body_within_the_cap_reaches_the_function_decoded(host: Host) -> None:
    body = gzip.compress(b"x" * LIMIT)
    head = (
        f"POST /api/upload-stream HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    status, _, answer = _exchange(host.port, head + body)
    assert (status, answer) == (200, str(LIMIT).encode())


@pytest.mark.parametrize(
    ("target", "sent", "seen"),
    [
        ("/api/x?name_prefix=caf%C3%A9", b"name_prefix=caf%C3%A9", "café"),  # was b"name_prefix=caf\xe9"
        ("/api/x?name_prefix=%C4%80", b"name_prefix=%C4%80", "Ā"),  # was a 500: not encodable as latin-1
        ("/api/x?name_prefix=%F0%9F%98%80&a=b+c", b"name_prefix=%F0%9F%98%80&a=b+c", "😀"),
        ("/api/x", b"", None),
    ],
)
def test_a_stream_function_gets_the_query_string_as_sent(target: str, sent: bytes, seen: str | None) -> None:
    scope = _scope(make_mocked_request("GET", target))
    assert scope["query_string"] == sent
    assert scope["raw_path"] == b"/api/x"
    assert Request(scope).query_params.get("name_prefix") == seen


@pytest.fixture()
def instrumented_gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The app as the gateway function serves it (its error boundary outermost), with the telemetry span layer the
    app installs when telemetry is on."""
    _settings(monkeypatch)
    monkeypatch.setattr(api_app, "telemetry_mode", lambda: "file")
    get_settings.cache_clear()
    app = api_app.create_app()
    try:
        yield asgi_gateway(app).app
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("query", "pointer"),
    [(b"name_prefix=\xe9", "/query/name_prefix"), (b"name_prefix=\xc3%A9", "/query")],
)
def test_query_text_not_utf8_as_sent_is_a_422_problem(instrumented_gateway: Any, query: bytes, pointer: str) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/intents",
        "raw_path": b"/api/v1/intents",
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"x"), (b"x-request-id", b"query-not-utf8")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 7071),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(instrumented_gateway(scope, receive, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    headers = {bytes(k).decode(): bytes(v).decode() for k, v in start["headers"]}
    # Was 500 text/plain without a request id: the span layer raised decoding the query before any handler ran.
    assert start["status"] == 422, body
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"] == "query-not-utf8"
    problem = json.loads(body)
    assert problem["type"] == "https://quantum-platform.dev/problems/validation-error"
    assert problem["instance"] == "/api/v1/intents"
    assert [(e["pointer"], e["code"]) for e in problem["errors"]] == [(pointer, "not_utf8")]


@pytest.mark.parametrize("path", ["/api/upload", "/api/upload-stream"])
def test_a_body_that_stops_coming_is_a_408_problem_and_the_connection_ends(
    host: Host, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(http_streams, "BODY_GRACE_S", 0.2)  # the Functions host's server allows 5 s
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: slow-body\r\nContent-Length: 100\r\n\r\n{{".encode()
    # Was no answer at all, the connection held for as long as the client kept it (the read waited for ever).
    status, headers, body = _exchange(host.port, head)
    assert status == 408, body
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"] == "slow-body"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["status"] == 408
    assert problem["instance"] == path
    assert problem["detail"] == "the request body came too slowly: 1 bytes of it were received"
