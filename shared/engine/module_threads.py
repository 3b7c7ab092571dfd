# intent_ref: platform.execution
"""The threads modules run on, in each process: a bounded pool of which one tenant holds at most a share, and the
places that bound how many of one tenant's items a process takes on at once.

A module blocks its thread until it returns, and one left running past its deadline keeps it. Without a share, one
tenant's slow steps (an HTTP call to an endpoint that answers after minutes) could take every thread of a process,
and every other tenant's items on that process would wait for a thread until their own deadlines. The share keeps
the threads fair; the places keep the hub fair: a tenant's items past its places wait without a claim, and the
worker hands those still waiting at its batch's hold back to the hub instead of holding their partition (ADR 0048).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar
from uuid import UUID

MODULE_THREADS = 8
"""Modules running at once in this process: they block a thread each, and some take a database connection."""
TENANT_SHARE = MODULE_THREADS // 2
"""Threads one tenant's modules may hold at once in this process; its further items wait without a thread."""
TENANT_ADMITTED = 2 * TENANT_SHARE
"""A tenant's items one process takes on at once (its places): those on its share of the threads and as many next in
line, so that its share never idles between them. Its further items wait without a claim, and a batch hands those
still waiting at its hold's end back to the hub (ADR 0048)."""

T = TypeVar("T")


class LazyThreads:
    """A process's thread pool of `size` threads, started on first use: a process that never runs module work (an
    HTTP-only worker) starts none."""

    def __init__(self, size: int, name: str) -> None:
        self._size, self._name = size, name
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(max_workers=self._size, thread_name_prefix=self._name)
            return self._threads


_pool = LazyThreads(MODULE_THREADS, "module-work")
# Per event loop, since an asyncio.Semaphore belongs to the loop it first waits on.
_shares: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[UUID, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)
_places: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[UUID, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _semaphore(
    per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[UUID, asyncio.Semaphore]],
    tenant_id: UUID,
    size: int,
) -> asyncio.Semaphore:
    semaphores = per_loop.setdefault(asyncio.get_running_loop(), {})
    semaphore = semaphores.get(tenant_id)
    if semaphore is None:
        semaphore = semaphores[tenant_id] = asyncio.Semaphore(size)
    return semaphore


@contextlib.asynccontextmanager
async def tenant_place(tenant_id: UUID) -> AsyncIterator[None]:
    """Hold one of `tenant_id`'s TENANT_ADMITTED places in this process for the block, once one is free (a wait
    cancelled takes none)."""
    async with _semaphore(_places, tenant_id, TENANT_ADMITTED):
        yield


async def run_in_share(tenant_id: UUID, function: Callable[[], T]) -> T:
    """Run `function` on the module threads, in the current context, once `tenant_id`'s share has room.

    Cancelled while it waits for room or for a thread, it never runs. Cancelled while it runs, it is left behind
    (a thread cannot be stopped) and keeps its place in the share until it returns.
    """
    loop = asyncio.get_running_loop()
    share = _semaphore(_shares, tenant_id, TENANT_SHARE)
    await share.acquire()
    try:
        running: Future[T] = _pool().submit(contextvars.copy_context().run, function)
    except BaseException:
        share.release()
        raise

    def release(_: Future[T]) -> None:
        try:
            loop.call_soon_threadsafe(share.release)
        except RuntimeError:  # the loop is closed: so is every wait on its share
            pass

    running.add_done_callback(release)
    return await asyncio.wrap_future(running)
