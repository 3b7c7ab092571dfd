# intent_ref: platform.execution
"""An execution's events as server-sent events: each event as it is recorded, resumable by its number, kept alive
with comments, ending after the terminal event or once its caller's access ends (its token expires, its tenant is
suspended, a tenant policy forbids the read); a waiting stream holds no pooled connection and no permit, and one whose
client stops reading holds little and is cut off."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar
from uuid import UUID

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from shared.api.admission import get_admission
from shared.api.problems import (
    CONFLICT_ERRORS,
    ProblemError,
    invalid_fields,
    json_pointer,
    too_many_requests,
    unavailable_dependency,
    unknown_tenant,
)
from shared.api.security import RequestContext, refuse_suspended
from shared.db.session import platform_transaction
from shared.engine.event_wakeup import get_event_wakeup, recheck_s
from shared.engine.executions import ExecutionEvent
from shared.observability import metrics
from shared.tenants.repository import tenant_directory

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_HEADER = "X-Keep-Alive-Interval"
"""The stream's response header saying how often, in seconds, a quiet stream sends KEEPALIVE: a client waits about
twice that for a message before it takes the stream for broken (the interval is a setting, so no client can know it)."""
RECONNECT_MS = 1000
"""The `retry:` the stream asks a client to wait before reconnecting when it breaks off."""
MAX_EVENT_ID = 2**63 - 1
_MAX_EVENT_ID_DIGITS = len(str(MAX_EVENT_ID))
PIECE_BYTES = 16 * 1024
"""The most one message of a stream carries: whole events up to this, an event bigger than that alone, in writes of
this size. A stream moves on only as its client takes what was sent, so a client that stops reading holds its stream
at one message, never at the history; and every buffer between the stream and the socket that keeps a few messages
(the gateway adapter's, the host's) keeps a few of these, however big the events."""
TAIL_BYTES = 256 * 1024
"""The newest events a feed keeps rendered for its streams (at least the newest one); a stream further behind reads its
backlog itself, a page at a time. A feed is per execution: a tenant's streams of as many executions hold as many
tails, so this counts in what one stream may hold (ADR 0031), not only what its execution's streams share."""
BACKLOG_BYTES = 128 * 1024
"""The most of a backlog page a stream keeps rendered and unsent (at least one event); the rest of the page is read
again after what it sent. A stream whose client stops reading holds this while it waits to send its next message,
whatever the history's size: a few messages' worth, or one event bigger than that."""
CATCH_UP_PAGE = 500
"""The most events one read of a feed or of a stream's backlog asks for when the stream's owner lets it choose
(`read_page`), whatever the request's `limit` (the largest page the JSON answer gives): a stream's messages are cut by
PIECE_BYTES, not by pages, so what a client receives is the same, in fewer reads while it catches up. Each starts at
the request's page and doubles while a whole read fits what it renders (TAIL_BYTES, BACKLOG_BYTES), so a read of big
events holds no more than the request's page of them."""
SEND_TIMEOUT_KEEPALIVES = 2
"""A stream's client must take each message within this many keep-alive intervals, or it is cut off."""
END_GRACE_S = 2.0
"""How long past its end a stream's response may take to finish before it is cut off (220 s and this stay under the
230 s Azure's front end gives an HTTP function)."""
TENANT_LOOK_S = 5.0
"""How often an open stream looks whether its tenant is still active. The look asks the tenant directory the edge
admits requests with, whose answers live as long as this (its TTL; the control plane also clears it on a change here):
looking more often would read the same answer, less often would let a stream outlive a suspension longer than the
tenant's new requests do. So a stream ends within some seconds of its tenant's suspension, as its requests turn 403,
and a look costs a lookup in the directory's cache, or, once per TTL per process and Entra tenant, the one statement
that refreshes it for every request and stream of the tenant: nothing per event, nothing per stream."""
TOKEN_EXPIRED = b": access ended: token_expired\n\n"
"""The stream's last message when its caller's token expires (a comment: SSE clients skip it as they skip keep-alives,
and none takes it for an event); reconnecting with the same token is then a 401, with a renewed one it resumes."""
TENANT_SUSPENDED = b": access ended: tenant_suspended\n\n"
"""The stream's last message when its tenant is no longer active (suspended, or gone); reconnecting is then a 403."""
FORBIDDEN = b": access ended: forbidden\n\n"
"""The stream's last message when a tenant policy added since it started forbids its caller to read the execution;
reconnecting is then a 403 `forbidden`."""
NOT_FOUND = b": access ended: not_found\n\n"
"""The stream's last message when its execution is gone (erased or deleted) while it is open, found by a read of its
events or by deciding its read again; reconnecting is then a 404."""
Readable = Literal["allowed", "forbidden", "not_found"]
"""Whether a stream's caller may still read its execution: allowed, forbidden by a tenant policy, or the execution is
gone."""


class Progress(Protocol):
    """Where the execution stands, read with a page of its events (an execution is one)."""

    @property
    def terminal(self) -> bool:
        """No event will follow."""
        ...

    @property
    def last_event_seq(self) -> int:
        """The seq of its newest event."""
        ...


ReadAfter = Callable[[int], Awaitable[tuple[Progress, list[ExecutionEvent]]]]
"""Reads the events after a seq, at most the request's page of them, and where the execution stands. A read may return
fewer while more are recorded (the route's reads stop at a size in bytes): `last_event_seq` says whether more follow."""
ReadPage = Callable[[int, int], Awaitable[tuple[Progress, list[ExecutionEvent]]]]
"""Reads the events after a seq, at most as many as asked (maybe fewer, as ReadAfter), and where the execution
stands."""
Render = Callable[[ExecutionEvent], bytes]
T = TypeVar("T")


def _gone(exc: BaseException) -> bool:
    """Whether `exc` says the stream's execution is gone (a read's or a decision's 404): its stream ends NOT_FOUND."""
    return isinstance(exc, ProblemError) and exc.status == 404


def _unavailable(exc: BaseException) -> bool:
    """Whether `exc` is a failure a stream expects now and then and logs without its traceback: a dependency out of
    reach (the database down, the pool exhausted), a transaction rolled back for a concurrent one's sake, or another
    problem answered 5xx. Anything else is a bug, logged with its traceback."""
    return (
        unavailable_dependency(exc) is not None
        or isinstance(exc, CONFLICT_ERRORS)
        or (isinstance(exc, ProblemError) and exc.status >= 500)
    )


def _accepts(accept: str | None, kinds: Collection[str]) -> bool:
    """Whether the Accept header names one of the media ranges `kinds` with a q other than 0."""
    for media_range in (accept or "").split(","):
        kind, *parameters = (part.strip() for part in media_range.split(";"))
        if kind.lower() not in kinds:
            continue
        quality = next((p.partition("=")[2] for p in parameters if p.lower().startswith("q=")), "1")
        with contextlib.suppress(ValueError):
            return float(quality) > 0
    return False


def wants_event_stream(accept: str | None) -> bool:
    """Whether the Accept header asks for server-sent events (a media range of `text/event-stream`, q not 0)."""
    return _accepts(accept, {MEDIA_TYPE})


def takes_json(accept: str | None) -> bool:
    """Whether a client asking for server-sent events also takes JSON (`application/json`, `application/*` or `*/*`,
    q not 0): the Python client does, to read the long poll from a server that does not stream; an EventSource does
    not."""
    return _accepts(accept, {"application/json", "application/*", "*/*"})


def resume_after(last_event_id: str | None, after: int) -> int:
    """Where a stream starts: after `Last-Event-ID` when a reconnecting client sends one, else after `after`."""
    if last_event_id is None:
        return after
    value = last_event_id.strip()
    # Length first: int() refuses strings of over 4,300 digits with an error of its own.
    if not value.isascii() or not value.isdigit() or len(value) > _MAX_EVENT_ID_DIGITS or int(value) > MAX_EVENT_ID:
        raise invalid_fields(
            (json_pointer(("header", "Last-Event-ID")), "not an event number"),
            detail="Last-Event-ID must be the number of an event of this stream.",
        )
    return int(value)


def frame(seq: int, event_type: str, data: BaseModel) -> bytes:
    """One event as an SSE message: `id` is its number (what `Last-Event-ID` resumes from), `data` its JSON."""
    return f"id: {seq}\nevent: {event_type}\ndata: {data.model_dump_json()}\n\n".encode()


def _piece_end(frames: Sequence[bytes], start: int) -> int:
    """Where the message that starts at `frames[start]` ends: as many frames as fit in PIECE_BYTES, at least one."""
    end, size = start, 0
    while end < len(frames) and (end == start or size + len(frames[end]) <= PIECE_BYTES):
        size += len(frames[end])
        end += 1
    return end


def _message(frames: Sequence[bytes], start: int, end: int) -> bytes:
    """`frames[start:end]` as one write (a single frame as it is, not copied)."""
    return frames[start] if end == start + 1 else b"".join(frames[start:end])


def _writes(message: bytes) -> Iterator[bytes]:
    """A message as the stream writes it: in writes of at most PIECE_BYTES (an event split across them is whole only
    once its last one arrives, which is all an SSE client dispatches; one cut off midway is resumed before it)."""
    if len(message) <= PIECE_BYTES:
        yield message
        return
    for start in range(0, len(message), PIECE_BYTES):
        yield message[start : start + PIECE_BYTES]


def _rendered(items: Sequence[ExecutionEvent], render: Render, budget: int) -> tuple[list[int], list[bytes]]:
    """The oldest of `items` rendered, as many as fit in `budget` bytes (at least one): their seqs and messages."""
    seqs: list[int] = []
    frames: list[bytes] = []
    size = 0
    for item in items:
        rendered = render(item)
        if frames and size + len(rendered) > budget:
            break
        seqs.append(item.seq)
        frames.append(rendered)
        size += len(rendered)
    return seqs, frames


class _Reads:
    """How a feed and its streams read: with `read_page` (when the stream's owner gives one) pages of up to
    CATCH_UP_PAGE events while they catch up; else `read`, a page of the request's `limit` each."""

    def __init__(self, read: ReadAfter, read_page: ReadPage | None, page: int) -> None:
        self.page = page
        self.largest = max(page, CATCH_UP_PAGE) if read_page is not None else page
        """The most events one read asks for."""
        # Without `read_page` no read asks for more than `page` (largest), which is what `read` reads.
        self.read_page: ReadPage = read_page or (lambda after, _size: read(after))


async def _admitted_read(
    tenant_id: UUID, read_page: ReadPage, after: int, size: int
) -> tuple[Progress, list[ExecutionEvent]]:
    """`read_page(after, size)` under a permit of the tenant (ADR 0023), waited for with a back-off when its bound
    is full."""
    return await admitted(tenant_id, lambda: read_page(after, size))


async def admitted(tenant_id: UUID, call: Callable[[], Awaitable[T]]) -> T:
    """`call()` under a permit of the tenant (ADR 0023), as a stream's reads run (a stream itself holds none), waited
    for with a back-off when its bound is full."""
    pause = _BUSY_RETRY_S
    while True:
        permit = await get_admission().permit_waiting(tenant_id)
        if permit is None:
            # The tenant's bound and queue are full: its streams read later, backing off, so that a thousand open
            # streams do not ask thousands of times a second (nor count as refused requests).
            await asyncio.sleep(pause)
            pause = min(pause * 2, _BUSY_RETRY_MAX_S)
            continue
        try:
            return await call()
        finally:
            permit.release()


class ExecutionFeed:
    """One execution's events, read once per process for all of its open streams: each notification of an append
    costs one read, however many streams follow the execution here. Reads take a permit of the execution's tenant
    (ADR 0023) like a request; a stream holds no permit, connection or thread while it waits or its client reads.

    It keeps only a recent tail of the events, rendered (TAIL_BYTES): a stream behind it reads its own backlog."""

    def __init__(self, key: _FeedKey, reads: _Reads, render: Render, start: int) -> None:
        self._key, self._reads, self._render = key, reads, render
        self.base = start
        """The tail holds every event past `base` up to `last_seq`; a stream at an earlier event reads its backlog."""
        self.last_seq = start
        """The newest event read; before the first read, where the first stream starts (the feed reads from there)."""
        self._seqs: list[int] = []
        self._frames: list[bytes] = []
        """The tail: each event past `base` by seq, as its SSE message, rendered once for all streams."""
        self._bytes = 0
        self.read_once = False
        """The first read is done: `base` and `last_seq` stand for what is recorded."""
        self.ended = False
        """The terminal event has been read: nothing more will come."""
        self.failed = False
        """Reading failed (the database is unreachable, or the execution is gone): its streams end and their clients
        reconnect."""
        self.gone = False
        """Reading failed because the execution is gone (erased or deleted): its streams end NOT_FOUND."""
        self._changed = asyncio.Condition()
        self._readers = 0
        self._task: asyncio.Task[None] | None = None

    def join(self) -> None:
        """Count a stream in; the first one starts the reading."""
        self._readers += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def leave(self) -> None:
        """Count a stream out; with the last one the reading stops and the feed is forgotten."""
        self._readers -= 1
        if self._readers <= 0:
            if _FEEDS.get(self._key) is self:  # a feed that failed was forgotten already, maybe for a new one
                del _FEEDS[self._key]
            if self._task is not None:
                self._task.cancel()

    def piece_after(self, seq: int) -> tuple[int, bytes]:
        """The next message of a stream that has sent up to `seq` (not before `base`): the events past `seq`, as
        many as fit in PIECE_BYTES, and the seq of the last of them; `(seq, b"")` when there is none yet."""
        start = bisect.bisect_right(self._seqs, seq)
        if start == len(self._seqs):
            return seq, b""
        end = _piece_end(self._frames, start)
        return self._seqs[end - 1], _message(self._frames, start, end)

    async def wait_beyond(self, seq: int, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for an event past `seq` (or the feed's end); False when none came."""

        def moved() -> bool:
            return self.failed or (self.read_once and (self.last_seq > seq or self.ended))

        async with self._changed:
            try:
                async with asyncio.timeout(timeout_s):  # not wait_for: on 3.11 it can swallow the request's cancel
                    await self._changed.wait_for(moved)
            except TimeoutError:
                return False
        return True

    def _take(self, execution: Progress, items: list[ExecutionEvent]) -> bool:
        """Add what a read returned to the tail; the oldest give way beyond TAIL_BYTES, and only the part of a read
        that stays is rendered. Whether the whole read fitted the tail."""
        if not items:
            if not self._seqs and self.last_seq > execution.last_event_seq:
                # The first stream starts past the last event: the feed follows from the last event instead, so that
                # the next one is read and a stream at an event before it finds it in its backlog.
                self.base = self.last_seq = execution.last_event_seq
            return True
        # The newest first, as many as the tail holds: the older part of a long read is never rendered.
        seqs, frames = _rendered(items[::-1], self._render, TAIL_BYTES)
        seqs.reverse()
        frames.reverse()
        if len(seqs) < len(items):
            self._seqs.clear()
            self._frames.clear()
            self._bytes = 0
            self.base = items[len(items) - len(seqs) - 1].seq
        self._seqs += seqs
        self._frames += frames
        self._bytes += sum(map(len, frames))
        dropped = 0
        while self._bytes > TAIL_BYTES and dropped < len(self._seqs) - 1:
            self._bytes -= len(self._frames[dropped])
            dropped += 1
        if dropped:
            self.base = self._seqs[dropped - 1]
            del self._seqs[:dropped], self._frames[:dropped]
        self.last_seq = items[-1].seq
        return len(seqs) == len(items)

    async def _run(self) -> None:
        wakeup = get_event_wakeup()
        size = self._reads.page
        try:
            with contextlib.ExitStack() as stack:
                waiter = stack.enter_context(wakeup.waiting(self._key[2])) if wakeup is not None else None
                while True:
                    if waiter is not None:
                        waiter.clear()  # before the read: an append after it wakes the wait below
                    execution, items = await _admitted_read(self._key[1], self._reads.read_page, self.last_seq, size)
                    fitted = self._take(execution, items)
                    # More is recorded than this read returned: it was cut by its size (`size` events) or by the bytes
                    # a read may hold (the route's), which a shorter read does not tell apart from the end.
                    full = len(items) >= size or (bool(items) and items[-1].seq < execution.last_event_seq)
                    # A feed catching up reads twice as many next time while a whole read fits the tail, up to the
                    # largest page: fewer rounds for small events, never more than the request's page of big ones.
                    size = min(2 * size, self._reads.largest) if full and fitted else self._reads.page
                    del items
                    self.ended = execution.terminal and not full
                    self.read_once = True
                    async with self._changed:
                        self._changed.notify_all()
                    if self.ended:
                        return
                    if full:
                        continue
                    # Woken by the listener (also when it connects, and when its connection drops), or reading
                    # again on its own: soon while the process does not listen, seldom while it does.
                    if waiter is None:
                        await asyncio.sleep(recheck_s(None))
                        continue
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(recheck_s(wakeup)):  # not wait_for: on 3.11 it can swallow a cancel
                            await waiter.event.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _gone(exc):
                logger.info("the event feed of execution %s stopped reading: the execution is gone", self._key[2])
                self.gone = True
            else:
                logger.exception("the event feed of execution %s stopped reading", self._key[2])
            self.failed = True
            if _FEEDS.get(self._key) is self:
                del _FEEDS[self._key]
            async with self._changed:
                self._changed.notify_all()


_FeedKey = tuple[asyncio.AbstractEventLoop, UUID, UUID]
_FEEDS: dict[_FeedKey, ExecutionFeed] = {}
_BUSY_RETRY_S = 0.05
_BUSY_RETRY_MAX_S = 1.0


_OPEN: dict[UUID, int] = {}
"""Streams open per tenant in this process: admitted and not yet ended."""
_OPEN_LOCK = threading.Lock()
RETRY_AFTER_S = 5


class StreamSlot:
    """A stream's place among its tenant's open streams, taken when it is admitted; given back once, whichever of
    the stream's end and its response's end comes first. It carries the stream's time limits to its response."""

    def __init__(self, tenant_id: UUID) -> None:
        self.tenant_id = tenant_id
        self._held = True
        self.deadline = math.inf
        """When the stream ends (`time.monotonic()`), set by `follow`; its response is cut off END_GRACE_S later."""
        self.send_timeout_s = math.inf
        """How long the stream's client may take to accept one message before it is cut off, set by `follow`."""

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


class _ClientStalled(Exception):
    """The client did not take a message of the stream in time (not an OSError: Starlette reads those as a
    disconnect)."""


def _finite(value: float) -> float | None:
    """A time limit as asyncio takes it: None for none."""
    return None if math.isinf(value) else value


class EventStreamResponse(StreamingResponse):
    """The stream's response: gives the stream's place back when it ends, also when its body never started (the
    client was gone before the first write, or the request was cancelled first), which `follow` cannot see.

    It cuts the stream off, whatever its body is doing, when the client does not take a message within the slot's
    send time limit or the stream outlives its end by END_GRACE_S: the answer is left unfinished, so the server (or
    the gateway adapter) drops it and closes the connection instead of holding it for a client that does not read."""

    def __init__(self, body: AsyncGenerator[bytes, None], slot: StreamSlot, headers: Mapping[str, str]) -> None:
        super().__init__(body, media_type=MEDIA_TYPE, headers=headers)
        self._body, self._slot = body, slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream within its time limits; in the end, whichever way it ends, close its body and give its
        place back."""
        slot = self._slot

        async def send_in_time(message: Message) -> None:
            try:
                async with asyncio.timeout(_finite(slot.send_timeout_s)):
                    await send(message)
            except TimeoutError:
                raise _ClientStalled from None

        loop = asyncio.get_running_loop()
        limit = asyncio.timeout_at(_finite(loop.time() + slot.deadline + END_GRACE_S - time.monotonic()))
        try:
            async with limit:
                await super().__call__(scope, receive, send_in_time)
        except _ClientStalled:
            logger.info("an event stream of tenant %s was cut off: its client took nothing for a while", slot.tenant_id)
        except TimeoutError:
            if not limit.expired():
                raise
            logger.info("an event stream of tenant %s was cut off at its end", slot.tenant_id)
        finally:
            try:
                # A body left suspended at a write that failed ends now, not when it is collected: its feed is left.
                await self._body.aclose()
            finally:
                slot.release()


@dataclass(frozen=True)
class StreamAccess:
    """What lets a stream's caller go on reading it once the route has let it in: its token, until `expires_at`, its
    tenant, while the tenant directory has it active, and the read's decision (`readable`), while the tenant's
    policies allow it. A stream checks them as it goes, not only when it starts: it may be open for minutes, longer
    than a token may have left and than a suspension or a new forbid takes to bite."""

    tenant_id: UUID
    entra_tenant_id: UUID
    """The caller's Entra tenant, by which the directory knows the tenant."""
    expires_at: float
    """When the caller's token is refused (a POSIX time): its `exp` plus the validator's leeway."""
    readable: Callable[[], Awaitable[Readable]] | None = None
    """Whether the caller may still read the stream's execution, as a new request's read would be decided now
    ("forbidden": a tenant policy forbids it; "not_found": the execution is gone); asked at each of the tenant's looks,
    so it must be cheap while nothing changed."""

    async def tenant_active(self) -> bool:
        """Whether the tenant is still active, as the edge admits its requests: from the directory's cache, or read
        again when its answer has aged out (on a worker thread)."""
        return await self.tenant_standing() == "active"

    async def tenant_standing(self) -> Literal["active", "suspended", "gone"]:
        """The stream's tenant as the edge would find it now (`tenant_standing`)."""
        return await tenant_standing(self.tenant_id, self.entra_tenant_id)


async def tenant_standing(tenant_id: UUID, entra_tenant_id: UUID) -> Literal["active", "suspended", "gone"]:
    """The tenant as the edge would find it now ("gone": erased, or its Entra tenant mapped to another), from the
    directory's cache, or read again when its answer has aged out (on a worker thread)."""
    known, tenant = tenant_directory.cached(entra_tenant_id)
    if not known:
        tenant = await run_in_threadpool(tenant_directory.resolve, platform_transaction, entra_tenant_id)
    if tenant is None or tenant.id != tenant_id:
        return "gone"
    return "active" if tenant.status == "active" else "suspended"


async def refuse_unless_active(context: RequestContext) -> None:
    """End a waiting poll (the JSON long poll, a worker's lease poll) whose tenant is no longer active as the tenant's
    new requests are refused: 403 `tenant-suspended` (its denial recorded), or as an unknown tenant's once erased."""
    standing = await tenant_standing(context.tenant.id, context.principal.entra_tenant_id)
    if standing == "gone":
        raise unknown_tenant()
    if standing == "suspended":
        await run_in_threadpool(refuse_suspended, context)


def _feed_for(tenant_id: UUID, execution_id: UUID, reads: _Reads, render: Render, start: int) -> ExecutionFeed:
    """The process's feed of the execution (made by its first stream, reading from where it starts), joined by the
    caller."""
    key = (asyncio.get_running_loop(), tenant_id, execution_id)
    feed = _FEEDS.get(key)
    if feed is None:
        feed = _FEEDS[key] = ExecutionFeed(key, reads, render, start)
    feed.join()
    return feed


def follow(
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
    read_page: ReadPage | None = None,
    access: StreamAccess | None = None,
) -> AsyncGenerator[bytes, None]:
    """The stream's body: what is recorded after `after`, then each new event as the process-wide listener
    announces it (its feed reads again on its own only as a safety net, `recheck_s`: every few seconds while the
    process does not listen, so a stream goes on while the listener is down), a keep-alive comment when nothing
    happened for `keepalive_s`, and the end after the terminal event or `max_s` from now (the client resumes from its
    last event). Its messages carry at most PIECE_BYTES (or one event) and it goes on only as the client takes them.
    It gives the stream's `slot` back when it ends, and sets the slot's time limits, which the stream's response holds
    it to.

    With `access`, it also ends when its caller's token expires (or at `max_s`, whichever comes first) and, within
    TENANT_LOOK_S, once its tenant is no longer active or a tenant policy forbids the read (`access.readable`); its
    last message then says why (TOKEN_EXPIRED, TENANT_SUSPENDED, FORBIDDEN), and a client that reconnects is answered
    as any new request of the caller is. A stream whose execution is gone (a read of its events, or the read decided
    again, finds none) ends NOT_FOUND; one that cannot look (the database out of reach) ends with a warning, and its
    client reconnects.

    `page` (the request's `limit`) is what `read` returns at most; with `read_page`, which reads as many as it is
    asked for, the feed and a stream's backlog read pages of up to CATCH_UP_PAGE instead: the same messages, in fewer
    reads."""
    now = time.monotonic()
    # The token's end on the stream's clock; the stream ends there as it does at its own end, and its response is
    # held to it the same way (cut off END_GRACE_S later), so a token that expired keeps no stream open.
    expires = math.inf if access is None else now + (access.expires_at - time.time())
    slot.deadline = min(now + max_s, expires)
    slot.send_timeout_s = SEND_TIMEOUT_KEEPALIVES * keepalive_s
    reads = _Reads(read, read_page, page)
    return _follow(context, slot, execution_id, after, reads, render, keepalive_s, access, expires)


async def _follow(
    context: RequestContext,
    slot: StreamSlot,
    execution_id: UUID,
    after: int,
    reads: _Reads,
    render: Render,
    keepalive_s: float,
    access: StreamAccess | None,
    expires: float,
) -> AsyncGenerator[bytes, None]:
    """`follow`'s body, which runs once the response starts sending it."""
    tenant_id = context.tenant.id
    if context.permit is not None:
        context.permit.release()  # the feed reads under the tenant's bound; a stream itself holds nothing
    feed = _feed_for(tenant_id, execution_id, reads, render, after)
    size = reads.page  # of the next backlog read: larger while its events are small (BACKLOG_BYTES)
    # The route let the caller in just now: the tenant's first look is one interval on.
    look_at = time.monotonic() + TENANT_LOOK_S if access is not None else math.inf
    try:
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        keepalive_at = time.monotonic() + keepalive_s
        while slot.deadline - time.monotonic() > 0:
            if access is not None and time.monotonic() >= look_at:
                try:
                    active = await access.tenant_active()
                    readable: Readable = "allowed"
                    if active and access.readable is not None:
                        readable = await access.readable()
                except Exception as exc:
                    # As when its feed cannot read: the stream ends and its client reconnects, admitted afresh. The
                    # database out of reach is no bug: a warning, without the traceback of each open stream.
                    if not _unavailable(exc):
                        logger.exception("an event stream of tenant %s could not look at its tenant or read", tenant_id)
                        return
                    logger.warning(
                        "an event stream of tenant %s ended: it could not look at its tenant or its read (%s: %s)",
                        tenant_id,
                        type(exc).__name__,
                        exc,
                    )
                    return
                if not active:
                    logger.info("an event stream of tenant %s ended: the tenant is not active", tenant_id)
                    yield TENANT_SUSPENDED
                    return
                if readable == "forbidden":
                    logger.info("an event stream of tenant %s ended: a tenant policy forbids reading it", tenant_id)
                    yield FORBIDDEN
                    return
                if readable == "not_found":
                    logger.info("an event stream of execution %s ended: the execution is gone", execution_id)
                    yield NOT_FOUND
                    return
                look_at = time.monotonic() + TENANT_LOOK_S
            if feed.read_once:
                if after < feed.base:
                    # Behind what the feed keeps (resuming from far back, or slower than the events come): the
                    # backlog from the database, a page at a time, read on only as the client takes what was sent.
                    try:
                        _, items = await _admitted_read(tenant_id, reads.read_page, after, size)
                    except Exception as exc:
                        if not _gone(exc):
                            logger.exception("an event stream of execution %s could not read its backlog", execution_id)
                            return
                        logger.info("an event stream of execution %s ended: the execution is gone", execution_id)
                        yield NOT_FOUND
                        return
                    if not items:
                        return  # the events before the feed's were erased: nothing to resume from
                    seqs, frames = _rendered(items, render, BACKLOG_BYTES)
                    # What is not kept is read again after what is sent: as many as were kept next time (a page of
                    # big events read whole to send two of them made a slow reader cost Postgres 50 times what it
                    # took), twice as many again once a whole page fits.
                    size = max(1, len(seqs)) if len(seqs) < len(items) else min(2 * size, reads.largest)
                    del items
                    while frames:
                        end = _piece_end(frames, 0)
                        message = _message(frames, 0, end)
                        after = seqs[end - 1]
                        del seqs[:end], frames[:end]
                        for part in _writes(message):
                            yield part
                        keepalive_at = time.monotonic() + keepalive_s
                        if time.monotonic() >= slot.deadline:
                            break
                    continue
                last, message = feed.piece_after(after)
                if message:
                    for part in _writes(message):
                        yield part
                    keepalive_at = time.monotonic() + keepalive_s
                    after = last
                    continue
                if feed.ended:
                    return
            if feed.failed:
                if feed.gone:
                    logger.info("an event stream of execution %s ended: the execution is gone", execution_id)
                    yield NOT_FOUND
                return
            # Woken by an event, or when a keep-alive, the tenant's look or the stream's end is due.
            wake_at = min(keepalive_at, look_at, slot.deadline)
            if not await feed.wait_beyond(after, max(0.0, wake_at - time.monotonic())):
                if time.monotonic() >= keepalive_at:
                    yield KEEPALIVE
                    keepalive_at = time.monotonic() + keepalive_s
        if time.monotonic() >= expires:
            # At the token's end (not at the stream's own, after which the client simply resumes): why it ended.
            logger.info("an event stream of tenant %s ended: its caller's token expired", tenant_id)
            yield TOKEN_EXPIRED
    finally:
        feed.leave()
        slot.release()
