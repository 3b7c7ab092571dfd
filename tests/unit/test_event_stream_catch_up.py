# intent_ref: platform.execution
"""A stream that catches up reads bigger pages (ADR 0031): its messages are cut by PIECE_BYTES, not by the request's
`limit`, so the feed and a stream's backlog, when the stream's owner lets them ask for a size, start at the request's
page and double it while a whole read fits what they render, up to CATCH_UP_PAGE events; the client gets the same
bytes in fewer reads, and a read of big events holds no more of them than the request's page.

The stream reads through what it is given, as the route gives it: here a list of events in memory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

from shared.api import event_stream
from shared.api.security import RequestContext
from shared.engine.executions import Execution, ExecutionEvent
from tests.unit.test_event_stream_bounds import (
    PAGE,
    Recorded,
    assert_bounded,
    ids_in,
    in_memory,  # noqa: F401  # the autouse fixture
    render,
)

BACKLOG = 450


@dataclass
class Sized(Recorded):
    """Recorded events that can also be read in pages of a size asked for; every read counted, as (after, size)."""

    sized: list[tuple[int, int]] = field(default_factory=list)

    async def read_page(self, after: int, size: int) -> tuple[Execution, list[ExecutionEvent]]:
        self.sized.append((after, size))
        execution, _ = await self.read(after)
        self.reads.pop()  # counted in `sized`
        return execution, [event for event in self.events if event.seq > after][:size]

    @property
    def rounds(self) -> int:
        return len(self.reads) + len(self.sized)


def backlog(output: int = 100, *, ended: bool = True) -> Sized:
    recorded = Sized()
    for _ in range(BACKLOG):
        recorded.append(output=output)
    if ended:
        recorded.end()
    return recorded


def stream(recorded: Sized, tenant_id: uuid.UUID, after: int, *, sized: bool) -> AsyncGenerator[bytes, None]:
    """A stream of the recorded execution with the request's page (PAGE), allowed to read bigger ones or not."""
    context = cast(RequestContext, SimpleNamespace(tenant=SimpleNamespace(id=tenant_id), permit=None))
    slot = event_stream.admit_stream(tenant_id, 1000)
    return event_stream.follow(
        context,
        slot,
        uuid.UUID(int=0),
        after,
        recorded.read,
        render,
        page=PAGE,
        keepalive_s=60.0,
        max_s=120.0,
        read_page=recorded.read_page if sized else None,
    )


async def received(body: AsyncGenerator[bytes, None]) -> bytes:
    """Everything the stream sent, to its end, as a client that takes everything reads it."""
    got = b""
    async with asyncio.timeout(60):
        async for message in body:
            assert_bounded(message)
            got += message
    return got


def test_a_new_feed_catches_up_a_backlog_in_growing_reads_and_sends_the_same() -> None:
    paged, sized = backlog(), backlog()
    as_paged = asyncio.run(received(stream(paged, uuid.uuid4(), 0, sized=False)))
    as_sized = asyncio.run(received(stream(sized, uuid.uuid4(), 0, sized=True)))
    assert as_sized == as_paged
    assert ids_in(as_sized) == list(range(1, BACKLOG + 2))
    # Pages of the request's `limit`: a read per hundred events (five). Allowed to ask, the feed doubles its page while
    # a whole read fits its tail: three.
    assert paged.rounds == 5
    assert sized.sized == [(0, PAGE), (PAGE, 2 * PAGE), (3 * PAGE, 4 * PAGE)] and sized.rounds == 3


async def behind(recorded: Sized, *, sized: bool) -> bytes:
    """A stream from the start behind the feed's tail: a stream near the end makes the feed, which reads from there;
    the execution ends once both follow it. What the one from the start received."""
    tenant_id = uuid.uuid4()
    ahead = asyncio.create_task(received(stream(recorded, tenant_id, BACKLOG - 1, sized=sized)))
    await asyncio.sleep(0.05)
    from_start = asyncio.create_task(received(stream(recorded, tenant_id, 0, sized=sized)))
    await asyncio.sleep(0.05)
    recorded.end()
    got = await from_start
    await ahead
    return got


def test_a_stream_behind_the_feeds_tail_reads_its_backlog_in_growing_pages_and_sends_the_same() -> None:
    paged, sized = backlog(ended=False), backlog(ended=False)
    as_paged = asyncio.run(behind(paged, sized=False))
    as_sized = asyncio.run(behind(sized, sized=True))
    assert as_sized == as_paged
    assert ids_in(as_sized) == list(range(1, BACKLOG + 2))
    # The backlog is what lies before the feed's first read (after BACKLOG - 1).
    assert [after for after in paged.reads if after < BACKLOG - 1] == [0, 100, 200, 300, 400]
    assert [(after, size) for after, size in sized.sized if after < BACKLOG - 1] == [
        (0, PAGE),
        (PAGE, 2 * PAGE),
        (3 * PAGE, 4 * PAGE),
    ]


def test_a_backlog_of_big_events_is_not_read_in_big_pages_again_and_again() -> None:
    recorded = backlog(output=20_000, ended=False)  # some 50 events fit in BACKLOG_BYTES
    got = asyncio.run(behind(recorded, sized=True))
    assert ids_in(got) == list(range(1, BACKLOG + 2))
    sizes = [size for after, size in recorded.sized if after < BACKLOG - 1]
    # A page of them does not fit what a backlog read renders: what did not fit is read again after what was sent,
    # as many as fit the last time, never more than the request's page; so the events read stay within twice those
    # sent and a page (read whole each time, a page of big events cost Postgres thirty times what the stream sent).
    assert sizes and all(size <= PAGE for size in sizes), sizes
    assert sum(sizes) <= 2 * (BACKLOG - 1) + PAGE, sum(sizes)


def test_a_new_feed_of_big_events_reads_no_more_than_the_requests_page_at_once() -> None:
    recorded = backlog(output=20_000)  # some 50 events fit in TAIL_BYTES
    got = asyncio.run(received(stream(recorded, uuid.uuid4(), 0, sized=True)))
    assert ids_in(got) == list(range(1, BACKLOG + 2))
    assert recorded.sized and all(size <= PAGE for _, size in recorded.sized), recorded.sized
