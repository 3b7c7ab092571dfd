# intent_ref: platform.devhost
"""An HTTP-stream function served by the devhost sees its client hang up while it waits, before it sends anything
(`Request.is_disconnected()`), as the Python worker's uvicorn shows it; a client still connected is not reported
gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from devhost.http_streams import serve_stream

TIMEOUT_S = 10.0
ROUNDS = int(TIMEOUT_S / 0.05)


class Waiting(Response):
    """A function's answer that waits, as a long poll does, asking whether its client is still there, then answers."""

    def __init__(self, request: Request, rounds: int, seen: asyncio.Event, started: asyncio.Event) -> None:
        self._request, self._rounds, self._seen, self._started = request, rounds, seen, started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._started.set()
        rounds = 0
        while rounds < self._rounds:
            if await self._request.is_disconnected():
                self._seen.set()
                break
            rounds += 1
            await asyncio.sleep(0.05)
        await PlainTextResponse("gone" if self._seen.is_set() else "here")(scope, receive, send)


class Invoker:
    """Stands for the devhost's invoker: the function returns `answer(request)` for the request it is given."""

    def __init__(self, answer: Callable[[Request], Response]) -> None:
        self._answer = answer

    async def call(self, function: Any, inputs: Any, *, trace_parent: str = "", native: dict[str, Any]) -> Any:
        return self._answer(native["req"])


@asynccontextmanager
async def serving(answer: Callable[[Request], Response]) -> AsyncIterator[int]:
    """A devhost-like server whose one route is an HTTP-stream function; yields its port."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await serve_stream(request, None, Invoker(answer), "req", {})  # type: ignore[arg-type]

    app = web.Application()
    app.router.add_post("/poll", handle)
    runner = web.AppRunner(app)  # as the devhost's: no handler cancellation, the function runs on
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def _request(*headers: bytes) -> bytes:
    head = b"".join(header + b"\r\n" for header in headers)
    return (
        b"POST /poll HTTP/1.1\r\nHost: x\r\n" + head + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )


def test_a_client_that_hangs_up_while_the_function_waits_is_seen_gone_before_anything_is_sent() -> None:
    async def scenario() -> None:
        seen, started = asyncio.Event(), asyncio.Event()
        # Bounded, so that a failing run does not keep the server's cleanup waiting.
        async with serving(lambda request: Waiting(request, ROUNDS, seen, started)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_request())
            await writer.drain()
            await asyncio.wait_for(started.wait(), TIMEOUT_S)
            writer.close()  # Ctrl-C on the worker: its socket closes, nothing was sent to it
            await writer.wait_closed()
            await asyncio.wait_for(seen.wait(), TIMEOUT_S)

    asyncio.run(scenario())


def test_a_client_still_connected_is_not_reported_gone() -> None:
    async def scenario() -> bytes:
        seen, started = asyncio.Event(), asyncio.Event()
        async with serving(lambda request: Waiting(request, 5, seen, started)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_request(b"Connection: close"))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), TIMEOUT_S)
            writer.close()
            return answer

    answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"here"), answer
