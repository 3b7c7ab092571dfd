# intent_ref: platform.execution
"""The threads modules run on, in each process: a bounded pool of which one tenant holds at most a share.

A module blocks its thread until it returns, and one left running past its deadline keeps it. Without a share, one
tenant's slow steps (an HTTP call to an endpoint that answers after minutes) could take every thread of a process,
and every other tenant's items on that process would wait for a thread until their own deadlines.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar
from uuid import UUID

MODULE_THREADS = 8
"""Modules running at once in this process: they block a thread each, and some take a database connection."""
TENANT_SHARE = MODULE_THREADS // 2
"""Threads one tenant's modules may hold at once in this process; its further items wait without a thread."""

T = TypeVar("T")

_threads: ThreadPoolExecutor | None = None
_threads_lock = threading.Lock()
# Per event loop, since an asyncio.Semaphore belongs to the loop it first waits on.
_shares: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[UUID, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _pool() -> ThreadPoolExecutor:
    global _threads
    with _threads_lock:
        if _threads is None:
            _threads = ThreadPoolExecutor(max_workers=MODULE_THREADS, thread_name_prefix="module-work")
        return _threads


def _share(loop: asyncio.AbstractEventLoop, tenant_id: UUID) -> asyncio.Semaphore:
    shares = _shares.setdefault(loop, {})
    share = shares.get(tenant_id)
    if share is None:
        share = shares[tenant_id] = asyncio.Semaphore(TENANT_SHARE)
    return share


async def run_in_share(tenant_id: UUID, function: Callable[[], T]) -> T:
    """Run `function` on the module threads, in the current context, once `tenant_id`'s share has room.

    Cancelled while it waits for room or for a thread, it never runs. Cancelled while it runs, it is left behind
    (a thread cannot be stopped) and keeps its place in the share until it returns.
    """
    loop = asyncio.get_running_loop()
    share = _share(loop, tenant_id)
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
