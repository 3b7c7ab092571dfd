# intent_ref: platform.execution
"""What a stream whose client does not read costs its instance stays under a small bound, whatever the size of the
execution's history (ADR 0031): the stream keeps at most a couple of messages rendered and its execution's feed a
short tail; the devhost takes a streamed answer's message only once little of it is left unsent (in its own buffer
and the kernel's), so the function sees a client that stops reading as stalled instead of feeding buffers; and an
answer the function leaves unfinished (its stall cut-off) closes the connection, dropping what was unsent, instead
of being finished by the server and held until the client goes.

The bounds are absolute numbers, the budget the ADR gives per stream, not the module's constants."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from devhost.http_streams import serve_stream
from shared.api import event_stream
from shared.api.routers.executions import event_out
from tests.unit.test_event_stream_bounds import (
    Recorded,
    held_bytes,
    ids_in,
    in_memory,  # noqa: F401  # the autouse fixture
    stream,
)

KIB = 1024
STREAM_HOLDS = 192 * KIB
"""The most a stream whose client stopped reading keeps rendered and unsent in the app: two messages' worth of its
backlog page and the message it is sending."""
FEED_HOLDS = 256 * KIB
"""The most an execution's feed keeps rendered (plus its newest event, however big)."""
HOST_TAKES = 512 * KIB
"""The most the devhost (its buffer and the kernel's) takes of an answer whose client reads nothing."""
HOST_BUFFER = 16 * KIB
"""The most of an answer left in the devhost's own buffer when it takes the next message (plus that message)."""
TIMEOUT_S = 30.0
PATIENCE_S = 0.5
"""How long the function that gives up waits for its message to be taken (what the stream's stall limit is)."""


def history(events: int, output: int) -> Recorded:
    recorded = Recorded()
    for _ in range(events):
        recorded.append(output=output)
    return recorded


@pytest.mark.parametrize("events", [400, 1600])
def test_a_stream_whose_client_stops_reading_holds_a_small_bound_whatever_the_historys_size(events: int) -> None:
    recorded = history(events, output=5_000)  # some 2 or 8 MB of events of 5 KB
    biggest = max(len(event_stream.frame(e.seq, e.type, event_out(e))) for e in recorded.events)

    async def scenario() -> tuple[int, int, int]:
        tenant_id = uuid.uuid4()
        # A stream at the end makes the feed, which follows from there: the one from the start reads its backlog.
        _, ahead = stream(recorded, tenant_id, events - 1)
        await ahead.__anext__()  # retry:
        _, body = stream(recorded, tenant_id, 0)
        got: list[int] = []
        while len(got) < 3:
            got.extend(ids_in(await body.__anext__()))
        # The client takes nothing more: the stream waits at its write with what it holds now.
        suspended: Any = body
        stream_holds = held_bytes(suspended.ag_frame.f_locals)
        feed_holds = sum(held_bytes(vars(feed)) for feed in event_stream._FEEDS.values())
        await body.aclose()
        await ahead.aclose()
        return got[0], stream_holds, feed_holds

    first, stream_holds, feed_holds = asyncio.run(scenario())
    assert first == 1
    assert stream_holds <= STREAM_HOLDS, stream_holds
    assert feed_holds <= FEED_HOLDS + biggest, feed_holds


WRITE_BYTES = 16 * KIB
"""The most one write of a stream carries, however big its events: the buffers between the stream and the socket
each keep a few writes."""


def test_every_write_of_a_stream_is_small_also_of_a_big_event_and_the_client_gets_each_event_whole() -> None:
    recorded = history(6, output=100)
    for _ in range(6):
        recorded.append(output=200_000)  # an event of some 200 KB
    recorded.end()

    async def scenario() -> list[bytes]:
        _, body = stream(recorded, uuid.uuid4())
        async with asyncio.timeout(TIMEOUT_S):
            return [message async for message in body]

    writes = asyncio.run(scenario())
    assert max(len(write) for write in writes) <= WRITE_BYTES, max(len(write) for write in writes)
    joined = b"".join(writes)
    assert ids_in(joined) == list(range(1, 14))
    assert [len(frame) for frame in joined.split(b"\n\n")[1:-1]] == [
        len(event_stream.frame(e.seq, e.type, event_out(e))) - 2 for e in recorded.events
    ]


@dataclass
class Flood:
    """What a function that sends small messages as fast as they are taken has seen of its sends."""

    taken: int = 0
    in_send: bool = False
    host_buffer: int = 0
    requests: list[web.Request] = field(default_factory=list)


class Flooding(Response):
    """An answer of small messages, sent one after the other as each is taken, never finishing."""

    def __init__(self, flood: Flood) -> None:
        self._flood = flood

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        flood = self._flood
        transport = flood.requests[0].transport
        assert transport is not None
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        while True:
            flood.in_send = True
            await send({"type": "http.response.body", "body": b"x" * KIB, "more_body": True})
            flood.in_send = False
            flood.taken += KIB
            flood.host_buffer = max(flood.host_buffer, transport.get_write_buffer_size())


class GivingUp(Response):
    """An answer that sends some of its body, then leaves it unfinished, as a stream cut off for its stall does: at
    once when its message is taken, else once it was not taken within a moment."""

    def __init__(self, size: int) -> None:
        self._size = size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PATIENCE_S):
                await send({"type": "http.response.body", "body": b"x" * self._size, "more_body": True})


class Invoker:
    """Stands for the devhost's invoker: the function returns `answer(request)`."""

    def __init__(self, answer: Callable[[Request], Response]) -> None:
        self._answer = answer

    async def call(self, function: Any, inputs: Any, *, trace_parent: str = "", native: dict[str, Any]) -> Any:
        return self._answer(native["req"])


@asynccontextmanager
async def serving(
    answer: Callable[[Request], Response], seen: list[web.Request], closing: list[bool] | None = None
) -> AsyncIterator[int]:
    """A devhost-like server whose one route is an HTTP-stream function; yields its port. `seen` gets each request,
    and `closing`, once its function's answer is done, whether its connection is being closed."""

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        answer_ = await serve_stream(request, None, Invoker(answer), "req", {})  # type: ignore[arg-type]
        if closing is not None:
            closing.append(request.transport is None or request.transport.is_closing())
        return answer_

    app = web.Application()
    app.router.add_get("/s", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def _silent_client(port: int) -> socket.socket:
    """A client that asks for the answer and never reads it (the smallest receive buffer the kernel allows)."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KIB)
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
    return client


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT_S):  # a bound for a failing run, not a measure
        while not condition():
            await asyncio.sleep(0.01)


def test_the_devhost_takes_little_of_an_answer_whose_client_reads_nothing() -> None:
    flood = Flood()

    async def scenario() -> None:
        async with serving(lambda _request: Flooding(flood), flood.requests) as port:
            client = _silent_client(port)
            try:
                await _until(lambda: bool(flood.requests))
                protocol = flood.requests[0].protocol
                # Stalled: the function waits at a send while the connection's writing is paused.
                await _until(lambda: flood.in_send and protocol.writing_paused)
            finally:
                client.close()

    asyncio.run(scenario())
    assert flood.taken <= HOST_TAKES, flood.taken
    assert flood.host_buffer <= HOST_BUFFER + KIB, flood.host_buffer


def test_an_answer_left_unfinished_closes_its_connection_dropping_what_was_unsent() -> None:
    closing: list[bool] = []

    async def scenario() -> None:
        async with serving(lambda _request: GivingUp(4 * 1024 * KIB), [], closing) as port:
            client = _silent_client(port)
            try:
                await _until(lambda: bool(closing))
            finally:
                client.close()

    asyncio.run(scenario())
    assert closing == [True]


def test_a_client_of_an_answer_left_unfinished_does_not_receive_a_complete_one() -> None:
    async def scenario() -> bytes:
        async with serving(lambda _request: GivingUp(10 * KIB), []) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            got = b""
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    while chunk := await reader.read(64 * KIB):
                        got += chunk
            except ConnectionResetError:
                pass
            writer.close()
            return got

    got = asyncio.run(scenario())
    # Chunked: a complete answer ends with the last chunk, which would tell the client nothing was cut off.
    assert not got.endswith(b"0\r\n\r\n"), got[-40:]
