# intent_ref: platform.execution
"""The threads modules run on, in each process: a bounded pool of which one tenant holds at most a share, some kept
for tenants holding none, and the places that bound how many of one tenant's items a process takes on at once.

A module blocks its thread until it returns, and one left running past its deadline keeps it. Without a share, one
tenant's slow steps (an HTTP call to an endpoint that answers after minutes) could take every thread of a process,
and every other tenant's items on that process would wait for a thread until their own deadlines. A share alone left
that to two tenants: two shares are every thread. So a tenant that already holds a thread takes another only while
more than THREADS_KEPT_FREE stay free, and a tenant holding none takes any free thread. The share and the threads
kept free keep the threads fair; the places keep the hub fair: a tenant's items past its places wait without a claim,
and the worker hands those still waiting at its batch's hold back to the hub instead of holding their partition (ADR
0048).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar
from uuid import UUID

MODULE_THREADS = 8
"""Modules running at once in this process: they block a thread each, and some take a database connection."""
TENANT_SHARE = MODULE_THREADS // 2
"""Threads one tenant's modules may hold at once in this process; its further items wait without a thread."""
THREADS_KEPT_FREE = MODULE_THREADS // 4
"""Threads only a tenant holding none may take: one holding a thread takes another only while more than these stay
free, so that tenants already holding threads (two at their shares, say) leave some to the next tenant's items
(ADR 0038, amended)."""
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
_places: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[UUID, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(eq=False)
class _Waiting:
    """A run waiting for a thread: woken on its own loop once one is taken for it."""

    tenant_id: UUID
    loop: asyncio.AbstractEventLoop
    woken: asyncio.Future[None]
    taken: bool = False
    """Whether a thread was taken for it (under the lock): a wait cancelled after that gives it back."""
    looked_again: bool = False
    """Whether a look again is due on its loop, passed over while stopped (under the lock)."""


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # cancelled meanwhile: the waiter gives back what was taken for it
        woken.set_result(None)


@dataclass(eq=False)
class ThreadShares:
    """Which tenants hold how many of a process's `size` threads, for every event loop of the process (the pool is
    the process's): a tenant takes one only while it holds fewer than `share` and, unless it holds none, more than
    `kept_free` stay free. A run that may not take one waits, without a thread and without polling, and is woken,
    in arrival order among those that may, when a thread comes back."""

    size: int
    share: int
    kept_free: int
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _held: dict[UUID, int] = field(default_factory=dict)
    _waiting: list[_Waiting] = field(default_factory=list)

    def held(self) -> dict[UUID, int]:
        """The threads each tenant holds now (a copy)."""
        with self._lock:
            return dict(self._held)

    def _may_take(self, tenant_id: UUID) -> bool:
        free = self.size - sum(self._held.values())
        holds = self._held.get(tenant_id, 0)
        return free > 0 if holds == 0 else holds < self.share and free > self.kept_free

    def _take(self, tenant_id: UUID) -> None:
        self._held[tenant_id] = self._held.get(tenant_id, 0) + 1

    def _count_down(self, tenant_id: UUID) -> None:
        left = self._held[tenant_id] - 1
        if left:
            self._held[tenant_id] = left
        else:
            del self._held[tenant_id]

    def _wake_those_who_may(self) -> None:
        """Take a thread for each waiting run that may now have one, in arrival order (under the lock)."""
        still: list[_Waiting] = []
        given_back = False
        for waiting in self._waiting:
            if waiting.loop.is_closed():
                continue  # its wait ended with its loop: it takes nothing and waits no more
            if not waiting.loop.is_running():
                # Stopped: a wake sent there would never run, and the thread taken for it would be held for good.
                # It keeps its turn, and is looked at again when a thread next comes back, or when its loop runs
                # again (threads may be free by then, with none to come back).
                still.append(waiting)
                if not waiting.looked_again:
                    waiting.looked_again = True
                    with contextlib.suppress(RuntimeError):  # closed meanwhile: dropped at the next look
                        waiting.loop.call_soon_threadsafe(self._look_again, waiting)
                continue
            if not self._may_take(waiting.tenant_id):
                still.append(waiting)
                continue
            self._take(waiting.tenant_id)
            waiting.taken = True
            try:
                waiting.loop.call_soon_threadsafe(_wake, waiting.woken)
            except RuntimeError:  # its loop is closed, and every wait on it with it
                waiting.taken = False
                self._count_down(waiting.tenant_id)
                given_back = True
        self._waiting = still
        if given_back:  # a thread one passed over may take
            self._wake_those_who_may()

    def _look_again(self, waiting: _Waiting) -> None:
        """On a wait's loop running again after it was passed over: wake those who may now take a thread."""
        with self._lock:
            waiting.looked_again = False
            self._wake_those_who_may()

    async def take(self, tenant_id: UUID) -> None:
        """Take a thread for `tenant_id` once it may; cancelled while it waits, it takes none."""
        loop = asyncio.get_running_loop()
        with self._lock:
            # Nobody waiting may take one (each change wakes those who may), so taking at once passes nobody.
            if self._may_take(tenant_id):
                self._take(tenant_id)
                return
            waiting = _Waiting(tenant_id, loop, loop.create_future())
            self._waiting.append(waiting)
        try:
            await waiting.woken
        except BaseException:
            with self._lock:
                if waiting.taken:
                    self._count_down(tenant_id)
                    self._wake_those_who_may()
                elif waiting in self._waiting:
                    self._waiting.remove(waiting)
            raise

    def give_back(self, tenant_id: UUID) -> None:
        """Give back a thread `tenant_id` took (from any thread) and wake the runs that may now take one."""
        with self._lock:
            self._count_down(tenant_id)
            self._wake_those_who_may()


_shares = ThreadShares(MODULE_THREADS, TENANT_SHARE, THREADS_KEPT_FREE)


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
    """Run `function` on the module threads, in the current context, once `tenant_id` may take one of them
    (ThreadShares: within its share, and not the last ones free unless it holds none).

    Cancelled while it waits for a thread, it never runs and takes none. Cancelled while it runs, it is left behind
    (a thread cannot be stopped) and keeps its thread, counted against its tenant, until it returns.
    """
    await _shares.take(tenant_id)
    try:
        running: Future[T] = _pool().submit(contextvars.copy_context().run, function)
    except BaseException:
        _shares.give_back(tenant_id)
        raise
    # Once it has returned (or, cancelled before a thread took it from the pool's queue, never will run).
    running.add_done_callback(lambda _: _shares.give_back(tenant_id))
    return await asyncio.wrap_future(running)
