# intent_ref: platform.gateway
"""Following a quiet execution's events: stream reads wait past the keep-alive the stream's answer names (twice it;
twice the longest the server can be set to when it names none) and the long poll whatever the client's timeout, and
a refused stream (429) is followed by the long poll instead of ending the follow."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import quantum_platform.client as module
from quantum_platform import AsyncClient, Client, RateLimited, StaticToken

from tests.unit.test_client_package import pauses  # noqa: F401  # the fixture

Handler = Callable[[httpx.Request], httpx.Response]
EVENTS = "/api/v1/executions/e/events"
DONE = {
    "execution_id": "e",
    "status": "succeeded",
    "next_after": 1,
    "items": [{"seq": 1, "type": "execution_completed"}],
}


def client(handler: Handler, **options: Any) -> Client:
    return Client("http://platform", credential=StaticToken("t"), transport=httpx.MockTransport(handler), **options)


def async_client(handler: Handler, **options: Any) -> AsyncClient:
    return AsyncClient(
        "http://platform", credential=StaticToken("t"), transport=httpx.MockTransport(handler), **options
    )


def follow_async(handler: Handler, **options: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        async with async_client(handler, **options) as api:
            return [event async for event in api.stream(EVENTS)]

    return asyncio.run(run())


def wants_stream(request: httpx.Request) -> bool:
    return request.headers["accept"].startswith("text/event-stream")


def refused(problem: str) -> httpx.Response:
    return httpx.Response(
        429,
        headers={"Retry-After": "0", "content-type": "application/problem+json"},
        json={"type": f"https://quantum-platform.dev/problems/{problem}", "title": "Too many requests", "status": 429},
    )


# --- the stream's read timeout ---


def timeouts_of(requests: list[httpx.Request]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=DONE)

    return handler


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_stream_reads_wait_past_the_keepalive_and_the_long_poll_with_a_short_client_timeout(follow: str) -> None:
    """With `timeout=1` the stream's reads still wait out a keep-alive interval twice and the long poll's hold;
    connecting, writing and the pool keep the client's own bound."""
    requests: list[httpx.Request] = []
    if follow == "sync":
        with client(timeouts_of(requests), timeout=1.0) as api:
            assert list(api.stream(EVENTS)) == DONE["items"]
    else:
        assert follow_async(timeouts_of(requests), timeout=1.0) == DONE["items"]
    timeout = requests[0].extensions["timeout"]
    assert timeout["read"] >= 30.0  # the 25 s long poll and a margin
    assert (timeout["connect"], timeout["write"], timeout["pool"]) == (1.0, 1.0, 1.0)


def test_a_client_timeout_longer_than_the_stream_needs_is_kept() -> None:
    requests: list[httpx.Request] = []
    with client(timeouts_of(requests), timeout=600.0) as api:
        list(api.stream(EVENTS))
    assert requests[0].extensions["timeout"]["read"] == 600.0


def ends_quiet_then_pages(requests: list[httpx.Request]) -> Handler:
    """A stream that ends with nothing new; the page asked for then says the execution ended."""

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if wants_stream(request):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b": keep-alive\n\n")
        return httpx.Response(200, json=DONE)

    return handler


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_the_page_asked_for_after_a_quiet_stream_also_waits_past_the_long_poll(follow: str) -> None:
    requests: list[httpx.Request] = []
    if follow == "sync":
        with client(ends_quiet_then_pages(requests), timeout=1.0) as api:
            assert list(api.stream(EVENTS)) == DONE["items"]
    else:
        assert follow_async(ends_quiet_then_pages(requests), timeout=1.0) == DONE["items"]
    page = requests[-1]
    assert not wants_stream(page) and page.url.params["wait"] == "25.0"
    assert page.extensions["timeout"]["read"] >= 30.0
    assert page.extensions["timeout"]["connect"] == 1.0


class _QuietStream(BaseHTTPRequestHandler):
    """An execution that stays quiet for longer than the client's timeout: keep-alives only, then its end."""

    gap = threading.Event()

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802  # the handler's name
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        with contextlib.suppress(OSError):  # a client that gave up has closed the connection
            for _ in range(2):
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
                # Longer than the client's read timeout (0.05 s) between messages.
                self.gap.wait(0.3)
            self.wfile.write(b'id: 1\nevent: execution_completed\ndata: {"seq": 1, "type": "execution_completed"}\n\n')
            self.wfile.flush()


@pytest.fixture
def quiet_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QuietStream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_quiet_stream_is_followed_with_a_timeout_shorter_than_its_keepalive(
    quiet_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No reconnect at all: a read that timed out between keep-alives would raise at once.
    monkeypatch.setattr(module, "_RECONNECTS", 0)
    with Client(quiet_server, credential=StaticToken("t"), timeout=0.05) as api:
        assert list(api.stream(EVENTS)) == [{"seq": 1, "type": "execution_completed"}]


def test_the_async_client_follows_a_quiet_stream_with_a_timeout_shorter_than_its_keepalive(
    quiet_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "_RECONNECTS", 0)

    async def run() -> list[dict[str, Any]]:
        async with AsyncClient(quiet_server, credential=StaticToken("t"), timeout=0.05) as api:
            return [event async for event in api.stream(EVENTS)]

    assert asyncio.run(run()) == [{"seq": 1, "type": "execution_completed"}]


# --- the server's keep-alive interval ---

COMPLETED = b'id: 1\nevent: execution_completed\ndata: {"seq": 1, "type": "execution_completed"}\n\n'


def streams_naming(interval: str | None, requests: list[httpx.Request]) -> Handler:
    """A stream whose answer names `interval` as its keep-alive (None: names none), ending at once."""

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        headers = {"content-type": "text/event-stream"}
        if interval is not None:
            headers["X-Keep-Alive-Interval"] = interval
        return httpx.Response(200, headers=headers, content=COMPLETED)

    return handler


@pytest.mark.parametrize(
    ("interval", "timeout", "read"),
    [
        ("90", 1.0, 180.0),  # twice the named interval
        ("0.3", 1.0, 1.0),  # the client's own timeout when longer
        ("90", 600.0, 600.0),
        (None, 1.0, 240.0),  # none named: twice the longest the server can be set to (120 s)
        ("soon", 1.0, 240.0),
        ("nan", 1.0, 240.0),
        ("inf", 1.0, 240.0),
        ("0", 1.0, 240.0),
        ("-5", 1.0, 240.0),
        ("1e9", 1.0, 7200.0),  # at most an hour counts: the timeout stays one a socket takes
    ],
)
@pytest.mark.parametrize("follow", ["sync", "async"])
def test_a_streams_reads_wait_twice_the_keepalive_its_answer_names(
    follow: str, interval: str | None, timeout: float, read: float
) -> None:
    requests: list[httpx.Request] = []
    if follow == "sync":
        with client(streams_naming(interval, requests), timeout=timeout) as api:
            assert list(api.stream(EVENTS)) == DONE["items"]
    else:
        assert follow_async(streams_naming(interval, requests), timeout=timeout) == DONE["items"]
    bounds = requests[0].extensions["timeout"]
    assert bounds["read"] == read
    assert (bounds["connect"], bounds["write"], bounds["pool"]) == (timeout, timeout, timeout)


class _LongKeepAliveStream(BaseHTTPRequestHandler):
    """A quiet execution whose stream names a keep-alive longer than the client waits for one unless told: 0.4 s,
    keep-alives 0.3 s apart, then its end."""

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802  # the handler's name
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-Keep-Alive-Interval", "0.4")
        self.end_headers()
        with contextlib.suppress(OSError):  # a client that gave up has closed the connection
            for _ in range(2):
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
                threading.Event().wait(0.3)
            self.wfile.write(COMPLETED)
            self.wfile.flush()


@pytest.fixture
def long_keepalive_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The stream above, and the client's own bounds scaled below its keep-alive: opening a stream 0.2 s, the interval
    it assumes when none is named 0.05 s; no reconnect at all, so a read that timed out raises at once."""
    monkeypatch.setattr(module, "_POLL_WAIT_S", 0.1)
    monkeypatch.setattr(module, "_STREAM_READ_MARGIN_S", 0.1)
    monkeypatch.setattr(module, "_UNNAMED_KEEPALIVE_S", 0.05)
    monkeypatch.setattr(module, "_RECONNECTS", 0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LongKeepAliveStream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_quiet_stream_is_followed_as_long_as_its_named_keepalive(long_keepalive_server: str) -> None:
    """Over a real connection: the interval the answer names sets the reads' timeout of the stream already open.
    Before, the client assumed the server's default interval (15 s), and a server set longer broke every quiet
    stream at the read timeout, again and again."""
    with Client(long_keepalive_server, credential=StaticToken("t"), timeout=0.05) as api:
        assert list(api.stream(EVENTS)) == [{"seq": 1, "type": "execution_completed"}]


def test_the_async_client_follows_a_quiet_stream_as_long_as_its_named_keepalive(long_keepalive_server: str) -> None:
    async def run() -> list[dict[str, Any]]:
        async with AsyncClient(long_keepalive_server, credential=StaticToken("t"), timeout=0.05) as api:
            return [event async for event in api.stream(EVENTS)]

    assert asyncio.run(run()) == [{"seq": 1, "type": "execution_completed"}]


# --- a refused stream ---


def streams_at_their_cap(calls: list[str]) -> Handler:
    """Every stream refused (`too-many-streams`), the long poll on the same URL served: an execution that runs for a
    few rounds, longer than the client's retries."""

    def handler(request: httpx.Request) -> httpx.Response:
        if wants_stream(request):
            calls.append("stream")
            return refused("too-many-streams")
        calls.append("poll")
        assert request.headers["accept"] == "application/json"
        after = int(request.url.params["after"])
        if after < 6:
            return httpx.Response(200, json={"next_after": after + 1, "items": [{"seq": after + 1, "type": "step"}]})
        return httpx.Response(200, json={"next_after": 7, "items": [{"seq": 7, "type": "execution_completed"}]})

    return handler


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_a_refused_stream_is_followed_by_the_long_poll(follow: str, pauses: list[float]) -> None:  # noqa: F811
    calls: list[str] = []
    if follow == "sync":
        with client(streams_at_their_cap(calls)) as api:
            events = list(api.stream(EVENTS))
    else:
        events = follow_async(streams_at_their_cap(calls))
    assert [event["seq"] for event in events] == [1, 2, 3, 4, 5, 6, 7]
    assert events[-1]["type"] == "execution_completed"
    assert calls == ["stream", "poll"] * 7  # each round asks for the stream again: a place may have come free


def tenant_busy_for(refusals: int, calls: list[str]) -> Handler:
    """The tenant's requests in flight at their bound for `refusals` requests, then served."""

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append("stream" if wants_stream(request) else "poll")
        if len(calls) <= refusals:
            return refused("tenant-busy")
        return httpx.Response(200, json=DONE)

    return handler


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_a_busy_tenant_is_waited_on_within_the_reconnect_budget(follow: str, pauses: list[float]) -> None:  # noqa: F811
    """More refusals than `max_retries` (4) do not end the follow: each round refused counts as a reconnect, after
    its Retry-After."""
    calls: list[str] = []
    if follow == "sync":
        with client(tenant_busy_for(10, calls)) as api:
            assert list(api.stream(EVENTS)) == DONE["items"]
    else:
        assert follow_async(tenant_busy_for(10, calls)) == DONE["items"]
    assert calls == ["stream"] * 11  # no poll sent against the Retry-After of a busy tenant
    assert pauses and all(pause == 0.0 for pause in pauses)  # the answers' Retry-After


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_a_tenant_busy_past_the_reconnect_budget_raises(follow: str, pauses: list[float]) -> None:  # noqa: F811
    calls: list[str] = []
    with pytest.raises(RateLimited):
        if follow == "sync":
            with client(tenant_busy_for(10_000, calls)) as api:
                list(api.stream(EVENTS))
        else:
            follow_async(tenant_busy_for(10_000, calls))
    # Each round is one stream refused (the poll would be refused too: no request against the Retry-After).
    assert calls == ["stream"] * (module._RECONNECTS + 1)
