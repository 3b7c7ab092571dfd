# intent_ref: platform.execution
"""An execution's events as server-sent events: each event as it is recorded, resumable by its number, kept alive
with comments, ending after the terminal event; a waiting stream holds no pooled connection and no permit."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from uuid import UUID

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.api.admission import get_admission
from shared.api.problems import FieldError, ProblemError, json_pointer, too_many_requests
from shared.api.security import RequestContext
from shared.engine.event_wakeup import get_event_wakeup
from shared.engine.executions import Execution, ExecutionEvent
from shared.observability import metrics

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"
RECONNECT_MS = 1000
"""The `retry:` the stream asks a client to wait before reconnecting when it breaks off."""
MAX_EVENT_ID = 2**63 - 1
_MAX_EVENT_ID_DIGITS = len(str(MAX_EVENT_ID))

ReadAfter = Callable[[int], Awaitable[tuple[Execution, list[ExecutionEvent]]]]
Render = Callable[[ExecutionEvent], bytes]


def wants_event_stream(accept: str | None) -> bool:
    """Whether the Accept header asks for server-sent events (a media range of `text/event-stream`, q not 0)."""
    for media_range in (accept or "").split(","):
        kind, *parameters = (part.strip() for part in media_range.split(";"))
        if kind.lower() != MEDIA_TYPE:
            continue
        quality = next((p.partition("=")[2] for p in parameters if p.lower().startswith("q=")), "1")
        with contextlib.suppress(ValueError):
            return float(quality) > 0
    return False


def resume_after(last_event_id: str | None, after: int) -> int:
    """Where a stream starts: after `Last-Event-ID` when a reconnecting client sends one, else after `after`."""
    if last_event_id is None:
        return after
    value = last_event_id.strip()
    # Length first: int() refuses strings of over 4,300 digits with an error of its own.
    if not value.isascii() or not value.isdigit() or len(value) > _MAX_EVENT_ID_DIGITS or int(value) > MAX_EVENT_ID:
        # The shape of every other 422 (a request validation error): errors of pointer and detail.
        raise ProblemError(
            422,
            "validation-error",
            "Request validation failed",
            "Last-Event-ID must be the number of an event of this stream.",
            errors=[FieldError(pointer=json_pointer(("header", "Last-Event-ID")), detail="not an event number")],
        )
    return int(value)


def frame(seq: int, event_type: str, data: BaseModel) -> bytes:
    """One event as an SSE message: `id` is its number (what `Last-Event-ID` resumes from), `data` its JSON."""
    return f"id: {seq}\nevent: {event_type}\ndata: {data.model_dump_json()}\n\n".encode()


class ExecutionFeed:
    """One execution's events, read once per process for all of its open streams: each notification of an append
    costs one read, however many streams follow the execution here. Reads take a permit of the execution's tenant
    (ADR 0023) like a request; a stream holds no permit, connection or thread while it waits or its client reads."""

    def __init__(self, key: _FeedKey, read: ReadAfter, render: Render, page: int) -> None:
        self._key, self._read, self._render, self._page = key, read, render, page
        self.events: list[ExecutionEvent] = []
        """Every event of the execution read so far, by seq."""
        self.frames: list[bytes] = []
        """Each of `events` as its SSE message, rendered once for all streams."""
        self.ended = False
        """The terminal event is among `events`: nothing more will come."""
        self.failed = False
        """Reading failed (the database is unreachable): its streams end and their clients reconnect."""
        self._changed = asyncio.Condition()
        self._readers = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def join(self) -> None:
        """Count a stream in; the first one starts the reading."""
        self._readers += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def leave(self) -> None:
        """Count a stream out; with the last one the reading stops and the feed is forgotten."""
        self._readers -= 1
        if self._readers <= 0:
            _FEEDS.pop(self._key, None)
            if self._task is not None:
                self._task.cancel()

    def after(self, seq: int) -> tuple[int, list[bytes]]:
        """The last seq read so far and the SSE messages of the events past `seq`."""
        return self.last_seq, self.frames[bisect.bisect_right(self.events, seq, key=lambda event: event.seq) :]

    async def wait_beyond(self, seq: int, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for an event past `seq` (or the feed's end); False when none came."""

        def moved() -> bool:
            return self.last_seq > seq or self.ended or self.failed

        async with self._changed:
            try:
                async with asyncio.timeout(timeout_s):  # not wait_for: on 3.11 it can swallow the request's cancel
                    await self._changed.wait_for(moved)
            except TimeoutError:
                return False
        return True

    async def _run(self) -> None:
        wakeup = get_event_wakeup()
        try:
            with contextlib.ExitStack() as stack:
                waiter = stack.enter_context(wakeup.waiting(self._key[2])) if wakeup is not None else None
                while True:
                    if waiter is not None:
                        waiter.clear()  # before the read: an append after it wakes the wait below
                    execution, items = await self._admitted_read(self.last_seq)
                    self.events.extend(items)
                    self.frames.extend(self._render(item) for item in items)
                    full = len(items) >= self._page
                    self.ended = execution.terminal and not full
                    async with self._changed:
                        self._changed.notify_all()
                    if self.ended:
                        return
                    if full:
                        continue
                    if waiter is not None:
                        await waiter.event.wait()  # the listener wakes every waiter when it reconnects, too
                    else:
                        await asyncio.sleep(_NO_LISTENER_RECHECK_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the event feed of execution %s stopped reading", self._key[2])
            self.failed = True
            _FEEDS.pop(self._key, None)
            async with self._changed:
                self._changed.notify_all()

    async def _admitted_read(self, after: int) -> tuple[Execution, list[ExecutionEvent]]:
        pause = _BUSY_RETRY_S
        while True:
            permit = await get_admission().permit_waiting(self._key[1])
            if permit is None:
                # The tenant's bound and queue are full: its feeds read later, backing off, so that a thousand open
                # streams do not ask thousands of times a second (nor count as refused requests).
                await asyncio.sleep(pause)
                pause = min(pause * 2, _BUSY_RETRY_MAX_S)
                continue
            try:
                return await self._read(after)
            finally:
                permit.release()


_FeedKey = tuple[asyncio.AbstractEventLoop, UUID, UUID]
_FEEDS: dict[_FeedKey, ExecutionFeed] = {}
_NO_LISTENER_RECHECK_S = 2.0
_BUSY_RETRY_S = 0.05
_BUSY_RETRY_MAX_S = 1.0


_OPEN: dict[UUID, int] = {}
"""Streams open per tenant in this process: admitted and not yet ended."""
_OPEN_LOCK = threading.Lock()
RETRY_AFTER_S = 5


class StreamSlot:
    """A stream's place among its tenant's open streams, taken when it is admitted; given back once, whichever of
    the stream's end and its response's end comes first."""

    def __init__(self, tenant_id: UUID) -> None:
        self.tenant_id = tenant_id
        self._held = True

    def release(self) -> None:
        """Give the place back (again: nothing)."""
        with _OPEN_LOCK:
            if not self._held:
                return
            self._held = False
            _OPEN[self.tenant_id] -= 1
            if not _OPEN[self.tenant_id]:
                del _OPEN[self.tenant_id]
        metrics.event_stream_opened(self.tenant_id, -1)


def admit_stream(tenant_id: UUID, limit: int) -> StreamSlot:
    """The stream's place among the tenant's open streams, or a 429 `too-many-streams` when they are at the bound
    here: a tenant's streams are cheap, not free, and one tenant may not take every socket of an instance.

    The place is taken now, not when the body starts: streams asked for together would all pass a bound that counts
    them later. The caller hands it to `follow` and to an `EventStreamResponse`, which give it back."""
    with _OPEN_LOCK:
        admitted = _OPEN.get(tenant_id, 0) < limit
        if admitted:
            _OPEN[tenant_id] = _OPEN.get(tenant_id, 0) + 1
    if not admitted:
        detail = f"This tenant already has {limit} event streams open here; close one or retry in {RETRY_AFTER_S} s."
        raise too_many_requests(tenant_id, "too-many-streams", detail, RETRY_AFTER_S, limit=limit)
    metrics.event_stream_opened(tenant_id)
    return StreamSlot(tenant_id)


class EventStreamResponse(StreamingResponse):
    """The stream's response: gives the stream's place back when it ends, also when its body never started (the
    client was gone before the first write, or the request was cancelled first), which `follow` cannot see."""

    def __init__(self, body: AsyncGenerator[bytes, None], slot: StreamSlot, headers: Mapping[str, str]) -> None:
        super().__init__(body, media_type=MEDIA_TYPE, headers=headers)
        self._body, self._slot = body, slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream; in the end, whichever way it ends, close its body and give its place back."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                # A body left suspended at a write that failed ends now, not when it is collected: its feed is left.
                await self._body.aclose()
            finally:
                self._slot.release()


def feed_for(tenant_id: UUID, execution_id: UUID, read: ReadAfter, render: Render, page: int) -> ExecutionFeed:
    """The process's feed of the execution (made by its first stream), joined by the caller."""
    key = (asyncio.get_running_loop(), tenant_id, execution_id)
    feed = _FEEDS.get(key)
    if feed is None:
        feed = _FEEDS[key] = ExecutionFeed(key, read, render, page)
    feed.join()
    return feed


async def follow(
    context: RequestContext,
    slot: StreamSlot,
    execution_id: UUID,
    after: int,
    read: ReadAfter,
    render: Render,
    *,
    page: int,
    keepalive_s: float,
    max_s: float,
) -> AsyncGenerator[bytes, None]:
    """The stream's body: what is recorded after `after`, then each new event as the process-wide listener
    announces it (no re-reading on a timer), a keep-alive comment when nothing happened for `keepalive_s`, and the
    end after the terminal event or after `max_s` (the client resumes from its last event). It gives the stream's
    `slot` back when it ends."""
    deadline = time.monotonic() + max_s
    tenant_id = context.tenant.id
    if context.permit is not None:
        context.permit.release()  # the feed reads under the tenant's bound; a stream itself holds nothing
    feed = feed_for(tenant_id, execution_id, read, render, page)
    try:
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        while True:
            last, frames = feed.after(after)
            if frames:
                yield b"".join(frames)  # what arrived together goes out in one write
                after = last
            if feed.ended or feed.failed:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if not await feed.wait_beyond(after, min(keepalive_s, remaining)):
                yield KEEPALIVE
    finally:
        feed.leave()
        slot.release()
