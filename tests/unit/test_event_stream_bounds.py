# intent_ref: platform.execution
"""What an event stream holds stays bounded whatever its client does (ADR 0031): each message carries at most
PIECE_BYTES (or one event), a stream whose client stops reading holds one message and at most BACKLOG_BYTES of a
page, an execution's feed keeps only its newest events (TAIL_BYTES) and reads from where its first stream starts;
and every event still arrives once, in order, to the terminal one, also for a stream resuming from far behind.
A stream's response cuts off a client that takes nothing within the send time limit, and at the stream's end
whatever its body is doing, and gives the stream's place back.

The stream reads through the `read` it is given, as the route gives it one: here a list of events in memory."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from starlette.types import Message

from shared.api import event_stream
from shared.api.admission import Admission
from shared.api.routers.executions import event_out
from shared.api.security import RequestContext
from shared.engine import event_wakeup
from shared.engine.executions import Execution, ExecutionEvent, Status

PAGE = 100
BIG = 100_000
"""An output that makes its event's message bigger than a piece (it goes alone)."""
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Recorded:
    """One execution's events as the database would answer them, and the positions the stream read from."""

    events: list[ExecutionEvent] = field(default_factory=list)
    status: Status = "running"
    reads: list[int] = field(default_factory=list)

    def append(self, kind: str = "step_completed", output: int = 100) -> None:
        data = {"attempt": 1, "output": {"v": "x" * output}}
        self.events.append(ExecutionEvent(len(self.events) + 1, kind, "s", data, NOW))

    def end(self) -> None:
        self.append("execution_completed", 0)
        self.status = "succeeded"

    async def read(self, after: int) -> tuple[Execution, list[ExecutionEvent]]:
        self.reads.append(after)
        await asyncio.sleep(0)
        execution = Execution(
            id=uuid.uuid4(),
            intent_id=uuid.uuid4(),
            intent_version=1,
            target="staging",
            status=self.status,
            input={},
            output=None,
            error=None,
            requested_by="tester",
            idempotency_key=None,
            plan_hash=None,
            last_event_seq=len(self.events),
            created_at=NOW,
            updated_at=NOW,
            finished_at=None,
        )
        return execution, [event for event in self.events if event.seq > after][:PAGE]


def render(event: ExecutionEvent) -> bytes:
    return event_stream.frame(event.seq, event.type, event_out(event))


@pytest.fixture(autouse=True)
def in_memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No listener (the feed re-reads soon, not on a notification) and an admission of its own."""
    monkeypatch.setattr(event_stream, "get_event_wakeup", lambda: None)
    monkeypatch.setattr(event_wakeup, "DOWN_RECHECK_S", 0.01)
    monkeypatch.setattr(event_stream, "get_admission", lambda: Admission(100))
    yield
    event_stream._FEEDS.clear()


def stream(
    recorded: Recorded, tenant_id: uuid.UUID, after: int = 0, *, keepalive_s: float = 60.0, max_s: float = 120.0
) -> tuple[event_stream.StreamSlot, AsyncGenerator[bytes, None]]:
    """A stream of the recorded execution, as the route makes one."""
    context = cast(RequestContext, SimpleNamespace(tenant=SimpleNamespace(id=tenant_id), permit=None))
    slot = event_stream.admit_stream(tenant_id, 1000)
    execution_id = uuid.UUID(int=0)
    body = event_stream.follow(
        context, slot, execution_id, after, recorded.read, render, page=PAGE, keepalive_s=keepalive_s, max_s=max_s
    )
    return slot, body


def frames_in(message: bytes) -> list[bytes]:
    """The SSE messages of one write (each ends with a blank line)."""
    return [part for part in message.split(b"\n\n") if part]


def ids_in(message: bytes) -> list[int]:
    return [
        int(part.split(b"\n", 1)[0].removeprefix(b"id: ")) for part in frames_in(message) if part.startswith(b"id:")
    ]


def assert_bounded(message: bytes) -> None:
    """A write carries at most a piece, or one event bigger than that alone."""
    assert len(message) <= event_stream.PIECE_BYTES or len(frames_in(message)) == 1, (len(message), ids_in(message))


def held_bytes(root: object) -> int:
    """The bytes reachable from `root` through lists, tuples, deques and dicts only (not through other objects, so a
    stream's feed, which all its streams share, is not counted as the stream's)."""
    seen: set[int] = set()
    total = 0
    todo = [root]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, bytes | bytearray | memoryview):
            total += len(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list | tuple | collections.deque):
            todo.extend(item)
    return total


async def collect(body: AsyncGenerator[bytes, None]) -> list[int]:
    """Read the stream to its end as a client that takes everything; the ids it carried, in order."""
    ids: list[int] = []
    async with asyncio.timeout(60):
        async for message in body:
            assert_bounded(message)
            ids.extend(ids_in(message))
    return ids


def big_history(n: int = 200) -> Recorded:
    """An execution whose history is far bigger than what a feed keeps: big events with small ones among them."""
    recorded = Recorded()
    for index in range(n):
        recorded.append(output=BIG if index % 3 else 100)
    return recorded


def test_a_client_that_stops_reading_holds_its_stream_at_one_message_and_a_bounded_part_of_a_page() -> None:
    recorded = big_history()
    biggest = max(len(render(event)) for event in recorded.events)

    async def scenario() -> tuple[list[bytes], int, int]:
        _, body = stream(recorded, uuid.uuid4())
        messages = [await body.__anext__()]  # retry:
        while sum(len(ids_in(m)) for m in messages) < 3:
            messages.append(await body.__anext__())
        # The client takes nothing more: the stream waits at its write with what it holds now.
        suspended: Any = body
        stream_holds = held_bytes(suspended.ag_frame.f_locals)
        feed_holds = sum(held_bytes(vars(feed)) for feed in event_stream._FEEDS.values())
        await body.aclose()
        return messages, stream_holds, feed_holds

    messages, stream_holds, feed_holds = asyncio.run(scenario())
    for message in messages:
        assert_bounded(message)
    assert stream_holds <= event_stream.BACKLOG_BYTES + event_stream.PIECE_BYTES + biggest, stream_holds
    assert feed_holds <= event_stream.TAIL_BYTES + biggest, feed_holds


@pytest.mark.parametrize("after", [0, 7, 150])
def test_a_reading_client_gets_each_event_once_in_order_to_the_terminal_one(after: int) -> None:
    recorded = big_history()
    recorded.end()

    async def scenario() -> list[int]:
        return await collect(stream(recorded, uuid.uuid4(), after)[1])

    assert asyncio.run(scenario()) == list(range(after + 1, len(recorded.events) + 1))
    # The feed starts where its first stream does, not at the first event.
    assert recorded.reads[0] == after


def test_streams_behind_and_ahead_of_the_feed_get_what_is_recorded_while_they_follow() -> None:
    recorded = big_history(40)
    tenant_id = uuid.uuid4()

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        # The first stream starts past the last event (a Last-Event-ID from elsewhere): the feed follows from the
        # last event all the same. Then one resumes near the end and one from the start, behind the feed's tail.
        beyond = asyncio.create_task(collect(stream(recorded, tenant_id, 10**12)[1]))
        await asyncio.sleep(0.05)
        ahead = asyncio.create_task(collect(stream(recorded, tenant_id, 38)[1]))
        behind = asyncio.create_task(collect(stream(recorded, tenant_id, 0)[1]))
        await asyncio.sleep(0.05)
        for index in range(30):
            recorded.append(output=BIG if index % 2 else 10)
            await asyncio.sleep(0.001)
        recorded.end()
        return await ahead, await behind, await beyond

    first, second, third = asyncio.run(scenario())
    last = len(recorded.events)
    assert first == list(range(39, last + 1))
    assert second == list(range(1, last + 1))
    assert third == []


def _scope(spec_version: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "method": "GET", "headers": []}


async def _never_disconnects() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _cut_off(spec_version: str, keepalive_s: float, max_s: float, stall_at: int) -> tuple[list[Any], bool]:
    """A stream's response to a client that takes `stall_at` body messages and then nothing: the messages it was
    sent, and whether the stream's place was given back once the response ended."""
    recorded = big_history(20)  # running: nothing ends the stream but its limits
    tenant_id = uuid.uuid4()
    slot, body = stream(recorded, tenant_id, keepalive_s=keepalive_s, max_s=max_s)
    sent: list[Any] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) > stall_at:
            await asyncio.Event().wait()  # the client stops reading: this write never completes

    response = event_stream.EventStreamResponse(body, slot, {})
    async with asyncio.timeout(60):  # a guard against a hang, far above the limits
        await response(_scope(spec_version), _never_disconnects, send)
    return sent, tenant_id not in event_stream._OPEN


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_client_that_takes_nothing_within_the_send_limit_is_cut_off_and_its_place_given_back(
    spec_version: str,
) -> None:
    sent, released = asyncio.run(_cut_off(spec_version, keepalive_s=0.05, max_s=3600, stall_at=2))
    assert released
    # Left unfinished, so that the server closes the connection rather than wait on it.
    assert not any(m["type"] == "http.response.body" and not m.get("more_body", False) for m in sent)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_stream_is_cut_off_at_its_end_even_while_its_write_waits(spec_version: str) -> None:
    # The send limit (twice the keep-alive) is far away; the stream's end is not.
    sent, released = asyncio.run(_cut_off(spec_version, keepalive_s=120, max_s=0.2, stall_at=1))
    assert released
    assert not any(m["type"] == "http.response.body" and not m.get("more_body", False) for m in sent)
