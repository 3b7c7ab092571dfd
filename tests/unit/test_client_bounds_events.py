# intent_ref: platform.gateway
"""An event stream that sends something other than events ends in UnexpectedAnswer, in both clients and in `qp events
--follow`: data that is not an event object of the documented shape at once, and messages that bring no new event
after STALE_MESSAGES of them in a row, instead of following such a stream for ever."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import quantum_platform.client as module
from quantum_platform import AsyncClient, Client, StaticToken, UnexpectedAnswer

from tests.unit.test_cli import ENTRA, Platform, home, platform, qp, refusal  # noqa: F401  # fixtures

EVENTS = "/api/v1/executions/e-1/events"
ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}
ENDLESS = 20_000
"""Messages after which a scripted endless stream stops: a client still reading then would have read for ever."""


class Endless(Exception):
    """The client read ENDLESS messages of a stream without giving up."""


class Stream:
    """A server whose event stream sends `first` once, then `message` without end; its JSON page (asked after a
    stream that ended) says the execution still runs."""

    def __init__(self, message: bytes, first: bytes = b"") -> None:
        self.message, self.first, self.sent = message, first, 0

    def chunks(self) -> Iterator[bytes]:
        yield b": keep-alive\n\n" + self.first
        while True:
            self.sent += 1
            if self.sent > ENDLESS:
                raise Endless(f"{self.sent} messages")
            yield self.message

    async def async_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            yield chunk

    def transport(self, *, asynchronous: bool = False) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            if request.headers.get("accept", "").startswith("text/event-stream"):
                body: Any = self.async_chunks() if asynchronous else self.chunks()
                return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
            return httpx.Response(200, json={"status": "running", "items": [], "next_after": 0})

        return httpx.MockTransport(handle)


def follow_sync(stream: Stream, got: list[dict[str, Any]]) -> None:
    with Client("http://p", credential=StaticToken("t"), transport=stream.transport()) as api:
        got.extend(api.stream(EVENTS))


def follow_async(stream: Stream, got: list[dict[str, Any]]) -> None:
    async def follow() -> None:
        transport = stream.transport(asynchronous=True)
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=transport) as api:
            async for event in api.stream(EVENTS):
                got.append(event)

    asyncio.run(follow())


FOLLOWERS = [follow_sync, follow_async]
STARTED = b'id: 1\nevent: execution_started\ndata: {"seq": 1, "type": "execution_started"}\n\n'


@pytest.mark.parametrize("follow", FOLLOWERS, ids=["sync", "async"])
@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not json", "data is not JSON"),
        (b"[1, 2]", "it is a list, not an object"),
        (b'"step_started"', "it is a string, not an object"),
        (b'{"seq": 2}', "/type is missing"),
        (b'{"seq": 2, "type": 7}', "/type is a number, not a string"),
        (b'{"seq": "two", "type": "step_started"}', "seq 'two' is not an event number"),
        (b'{"seq": 2, "type": "step_failed", "error": {"code": 1}}', "/error is an object, not a string or null"),
    ],
    ids=["not json", "a list", "a string", "no type", "a number for type", "a word for seq", "an object for error"],
)
def test_an_endless_stream_of_events_of_another_shape_is_refused_at_the_first(
    follow: Any, data: bytes, says: str
) -> None:
    stream = Stream(b"id: 2\nevent: step_started\ndata: " + data + b"\n\n", first=STARTED)
    got: list[dict[str, Any]] = []
    with pytest.raises(UnexpectedAnswer, match="an event stream") as refused:
        follow(stream, got)
    assert says in str(refused.value)
    assert [event["seq"] for event in got] == [1]  # the event before it was yielded, and nothing after
    assert stream.sent == 1


@pytest.mark.parametrize("follow", FOLLOWERS, ids=["sync", "async"])
@pytest.mark.parametrize(
    "message",
    [
        b"retry: 1000\n\n",
        b"id: 1\n\n",
        b"event: ping\n\n",
        b'id: 1\nevent: execution_started\ndata: {"seq": 1, "type": "execution_started"}\n\n',
    ],
    ids=["retry alone", "id alone", "event alone", "the last event again"],
)
def test_an_endless_stream_of_messages_without_a_new_event_is_given_up_after_the_bound(
    follow: Any, message: bytes
) -> None:
    stream = Stream(message, first=STARTED)
    got: list[dict[str, Any]] = []
    with pytest.raises(UnexpectedAnswer, match=f"{module.STALE_MESSAGES} messages in a row without a new event"):
        follow(stream, got)
    assert [event["seq"] for event in got] == [1]
    assert stream.sent == module.STALE_MESSAGES + 1


def test_messages_without_a_new_event_count_in_a_row_only() -> None:
    """A stream may send a few of them between its events (a `retry:` first, a resent last event): each new event
    starts the count again, so a long stream of them among events is followed to its end."""
    idle = b"retry: 1000\n\n" * module.STALE_MESSAGES
    events = [f'id: {n}\ndata: {{"seq": {n}, "type": "step_completed"}}\n\n'.encode() for n in range(1, 6)]
    end = b'id: 6\ndata: {"seq": 6, "type": "execution_completed"}\n\n'
    body = b"".join(idle + event for event in events) + idle + end

    def handle(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with Client("http://p", credential=StaticToken("t"), transport=httpx.MockTransport(handle)) as api:
        assert [event["seq"] for event in api.stream(EVENTS)] == [1, 2, 3, 4, 5, 6]


def test_qp_events_follow_ends_an_endless_stream_of_non_events_with_exit_3(platform: Platform) -> None:
    stream = Stream(b"data: <html>\n\n", first=STARTED)
    platform.handler = stream.transport().handler
    result = qp("events", "e-1", "--follow", "--output", "json", env=ENV)
    assert refusal(result) == "error: an event stream sent an event whose data is not JSON"
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1]


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ([1], "it is a list, not an object"),
        ({"seq": 1, "type": None}, "/type is null"),
        ({"seq": 1.5, "type": "x"}, "seq 1.5"),
    ],
    ids=["a list", "a null type", "a fraction for seq"],
)
def test_qp_events_refuses_a_page_whose_event_has_another_shape(platform: Platform, item: Any, says: str) -> None:
    platform.answer({f"GET {EVENTS}": {"status": "running", "items": [item], "next_after": 1}})
    line = refusal(qp("events", "e-1", env=ENV))
    assert "an events page answered" in line and says in line, line


def test_a_stream_of_events_of_the_documented_shape_is_followed_to_its_end() -> None:
    documented = {"step": None, "step_id": None, "data": {}, "error": None, "occurred_at": "2026-12-06T00:00:00Z"}
    body = "".join(
        f"id: {seq}\nevent: {kind}\ndata: {json.dumps(documented | {'seq': seq, 'type': kind})}\n\n"
        for seq, kind in [(1, "execution_started"), (2, "execution_completed")]
    )

    def handle(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)

    with Client("http://p", credential=StaticToken("t"), transport=httpx.MockTransport(handle)) as api:
        assert [event["type"] for event in api.stream(EVENTS)] == ["execution_started", "execution_completed"]
