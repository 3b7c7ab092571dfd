# intent_ref: platform.execution
"""An execution's events as server-sent events: each event as it is recorded, resumable by its number, kept alive
with comments, ending after the terminal event; a waiting stream holds no pooled connection and no permit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

from pydantic import BaseModel

from shared.api.admission import idle
from shared.api.problems import ProblemError
from shared.api.security import RequestContext
from shared.engine.event_wakeup import get_event_wakeup
from shared.engine.executions import Execution, ExecutionEvent

MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"
RECONNECT_MS = 1000
"""The `retry:` the stream asks a client to wait before reconnecting when it breaks off."""
MAX_EVENT_ID = 2**63 - 1

ReadAfter = Callable[[int], Awaitable[tuple[Execution, list[ExecutionEvent]]]]


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
    if not value.isascii() or not value.isdigit() or int(value) > MAX_EVENT_ID:
        raise ProblemError(
            422,
            "validation-error",
            "Invalid request",
            "Last-Event-ID must be the number of an event of this stream.",
            extensions={"errors": [{"loc": ["header", "Last-Event-ID"], "msg": "not an event number"}]},
        )
    return int(value)


def frame(seq: int, event_type: str, data: BaseModel) -> bytes:
    """One event as an SSE message: `id` is its number (what `Last-Event-ID` resumes from), `data` its JSON."""
    return f"id: {seq}\nevent: {event_type}\ndata: {data.model_dump_json()}\n\n".encode()


async def follow(
    context: RequestContext,
    execution_id: UUID,
    after: int,
    read: ReadAfter,
    render: Callable[[ExecutionEvent], bytes],
    *,
    page: int,
    keepalive_s: float,
    max_s: float,
) -> AsyncIterator[bytes]:
    """The stream's body: what is recorded after `after`, then each new event as the process-wide listener
    announces it (no re-reading on a timer), a keep-alive comment when nothing happened for `keepalive_s`, and the
    end after the terminal event or after `max_s` (the client resumes from its last event)."""
    deadline = time.monotonic() + max_s
    permit = context.permit
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    wakeup = get_event_wakeup()
    try:
        with contextlib.ExitStack() as stack:
            waiter = stack.enter_context(wakeup.waiting(execution_id)) if wakeup is not None else None
            while True:
                if time.monotonic() >= deadline:
                    return
                if waiter is not None:
                    waiter.clear()  # before the read: an append after it wakes the wait below
                if not await idle(context, 0.0):  # the tenant's bound is taken by other requests: try again soon
                    yield KEEPALIVE
                    continue
                execution, items = await read(after)
                if permit is not None:  # held while reading only, never while the client reads or the stream waits
                    permit.release()
                for item in items:
                    yield render(item)
                    after = item.seq
                if len(items) >= page:
                    continue
                if execution.terminal:
                    return
                woken = waiter.event if waiter is not None else asyncio.Event()
                while not woken.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), min(keepalive_s, remaining))
                    if not woken.is_set():
                        yield KEEPALIVE
                        if waiter is None:  # no listener in this process: a keep-alive is also a re-read
                            break
    finally:
        if permit is not None:
            permit.release()
