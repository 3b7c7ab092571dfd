# intent_ref: platform.gateway
"""The gateway adapter relays an answer as the app sends it (ADR 0031) and holds little for a client that does not
read: the app gets at most a few messages and 256 KiB (or one bigger message) ahead of the client, and an answer
the app gives up midway (an event stream that cut off its client) is not waited on, even in the middle of a write."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from shared.api.adapter import asgi_gateway, serve

CHUNK = 100_000


def _request() -> Request:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return Request(scope, receive)


async def _relay_to(app: Any, send: Send) -> Response:
    """`app` served through the adapter to a client whose writes are `send`; the relayed response, once it ended."""
    request = _request()
    response = await serve(asgi_gateway(app), request)
    async with asyncio.timeout(60):  # a guard against a hang
        await response(request.scope, request.receive, send)
    return response


async def _stalled_client(sent: list[Message], blocked: asyncio.Event) -> Send:
    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            blocked.set()
            await asyncio.Event().wait()  # the client takes nothing: the write never completes

    return send


def test_the_app_gets_only_so_far_ahead_of_a_client_that_does_not_read() -> None:
    given: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(20):
            await send({"type": "http.response.body", "body": b"x" * CHUNK, "more_body": True})
            given.append(CHUNK)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def scenario() -> int:
        sent: list[Message] = []
        blocked = asyncio.Event()
        relayed = asyncio.create_task(_relay_to(app, await _stalled_client(sent, blocked)))
        await blocked.wait()
        for _ in range(200):  # everything that can run without the client runs
            await asyncio.sleep(0)
        relayed.cancel()
        await asyncio.gather(relayed, return_exceptions=True)
        return sum(given)

    ahead = asyncio.run(scenario())
    # The message the client was sent and at most 256 KiB queued behind it (four of these would be 400 KB).
    assert ahead <= CHUNK + 256 * 1024, ahead


def test_an_answer_the_app_gives_up_is_not_waited_on_in_the_middle_of_a_write() -> None:
    blocked = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await blocked.wait()  # the client is not taking it
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        # It gives the answer up unfinished (as an event stream does with a client that took nothing in time).

    async def scenario() -> list[Message]:
        sent: list[Message] = []
        await _relay_to(app, await _stalled_client(sent, blocked))
        return sent

    sent = asyncio.run(scenario())
    # The relay returned, unfinished: the server closes the connection instead of holding it.
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


def test_a_finished_answer_is_relayed_whole_and_in_order() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(10):
            await send({"type": "http.response.body", "body": bytes([index]) * CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"end", "more_body": False})

    async def scenario() -> list[Message]:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)
            await asyncio.sleep(0)

        await _relay_to(app, send)
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["status"] == 200
    assert [m["body"] for m in sent[1:]] == [bytes([index]) * CHUNK for index in range(10)] + [b"end"]
    assert not sent[-1].get("more_body", False)
