# intent_ref: platform.rate-limits
"""Per-tenant admission: at most N requests of one tenant in flight per process, and none beyond its first once all
tenants' requests would leave too few connections over, so that a burst, or two, leaves room for others."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from functools import lru_cache
from typing import Protocol
from uuid import UUID

import anyio.to_thread

from shared.api.problems import ProblemError, too_many_requests
from shared.config import Settings, get_settings

QUEUE_WAIT_S = 0.5
"""How long a thread over its tenant's bound waits for a permit (`admit`, tests and sync callers)."""
QUEUE_PER_SLOT = 16
"""Requests queued per slot of the bound: a request waits on the event loop, holding no thread and no connection,
so a burst of a few dozen requests queues instead of being refused while each takes a few milliseconds."""
RETRY_AFTER_S = 1
_ASYNC_POLL_S = 0.02
_ASYNC_FIRST_POLL_S = 0.002
MIN_WORKER_THREADS = 40
"""anyio's default: the limit of threads that run sync dependencies and routes (see `worker_threads`)."""


class PoolShare:
    """The tenant pool's connections shared by the tenants with requests in flight in this process.

    A bound per tenant alone (half the pool) let two busy tenants hold the whole pool, and every other tenant's
    requests waited for a connection until the pool's timeout (503). A tenant's first request in flight is always
    let in; each further one only while, with it, every tenant's requests together leave `reserve` connections (a
    fifth of the pool, at least one) over for tenants that have none in flight. Below that, a tenant uses what is
    free up to its own limit: a share per busy tenant held five tenants with a request each to one, half the pool
    idle.
    """

    def __init__(self, pool_size: int) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self.pool_size = pool_size
        self.reserve = max(1, pool_size // 5)
        self._lock = threading.Lock()
        self._in_flight = 0

    def take(self, held: int, limit: int) -> bool:
        """Count one more request of a tenant that has `held` in flight, if its limit and the reserve allow it."""
        with self._lock:
            if held > 0 and (held >= limit or not self._leaves_reserve()):
                return False
            self._in_flight += 1
            return True

    def has_room(self) -> bool:
        """Whether a tenant's further request would leave the reserve (its own limit apart)."""
        with self._lock:
            return self._leaves_reserve()

    def _leaves_reserve(self) -> bool:
        return self._in_flight + 1 <= self.pool_size - self.reserve

    def give_back(self) -> None:
        """Count one request less."""
        with self._lock:
            self._in_flight -= 1


class TenantGate:
    """One tenant's requests in flight (at most `limit`, and within what the shared `pool` leaves when given) and those
    queued for a slot (at most `queue`)."""

    def __init__(self, limit: int, queue: int, pool: PoolShare | None = None) -> None:
        if limit < 1 or queue < 0:
            raise ValueError("limit must be >= 1 and queue >= 0")
        self.limit, self.queue = limit, queue
        self._pool = pool
        self._changed = threading.Condition()
        self._in_flight = 0
        self._waiting = 0

    def _take(self) -> bool:
        """Count one more request in flight if there is room (called with `_changed` held)."""
        if self._pool is not None:
            if not self._pool.take(self._in_flight, self.limit):
                return False
        elif self._in_flight >= self.limit:
            return False
        self._in_flight += 1
        return True

    def room(self) -> int:
        """The most requests this tenant may have in flight now: its limit, or what it holds (at least one) while
        the pool's reserve keeps its further requests out."""
        if self._pool is None or self._pool.has_room():
            return self.limit
        return min(self.limit, max(1, self.in_flight))

    @property
    def in_flight(self) -> int:
        """Permits held right now."""
        with self._changed:
            return self._in_flight

    @property
    def waiting(self) -> int:
        """Requests queued for a permit right now."""
        with self._changed:
            return self._waiting

    def join_queue(self) -> bool:
        """Count a request that waits for a slot elsewhere (on the event loop); False when the queue is full."""
        with self._changed:
            if self._waiting >= self.queue:
                return False
            self._waiting += 1
            return True

    def leave_queue(self) -> None:
        """The request counted by `join_queue` waits no more."""
        with self._changed:
            self._waiting -= 1

    def try_enter(self) -> bool:
        """Take a free slot without waiting."""
        with self._changed:
            return self._take()

    def enter(self, wait_s: float) -> bool:
        """Take a slot, waiting up to `wait_s` in the queue when it has room; False when none was had."""
        with self._changed:
            if self._take():
                return True
            if wait_s <= 0 or self._waiting >= self.queue:
                return False
            # A bounded queue keeps a burst from parking every worker thread here while it waits.
            self._waiting += 1
            try:
                deadline = time.monotonic() + wait_s
                while not self._take():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    # Other tenants' requests ending widen the share without waking this gate: look again soon.
                    self._changed.wait(remaining if self._pool is None else min(remaining, _ASYNC_POLL_S))
                return True
            finally:
                self._waiting -= 1

    def leave(self) -> None:
        """Give a slot back and wake one queued request."""
        with self._changed:
            if self._in_flight <= 0:
                raise RuntimeError("a tenant gate was left more often than entered")
            self._in_flight -= 1
            if self._pool is not None:
                self._pool.give_back()
            self._changed.notify()


class Permit:
    """One request's slot in its tenant's gate; released once, whichever of the request's threads gets there first."""

    def __init__(self, gate: TenantGate, wait_s: float) -> None:
        self._gate = gate
        self.wait_s = wait_s
        """How long taking it again may wait (the admission's queue wait)."""
        self._lock = threading.Lock()
        self._held = True

    @property
    def held(self) -> bool:
        """Whether the slot is taken by this request right now."""
        return self._held

    def release(self) -> None:
        """Give the slot back (again: nothing happens)."""
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._gate.leave()

    def resume(self, wait_s: float = 0.0) -> bool:
        """Take the slot again after `release` (waiting up to `wait_s` on this thread); True when held."""
        with self._lock:
            if self._held:
                return True
        if not self._gate.enter(wait_s):
            return False
        with self._lock:
            self._held = True
        return True


class Admission:
    """The gates of every tenant this process has served, each bounded alike."""

    def __init__(
        self,
        limit: int,
        *,
        queue: int | None = None,
        wait_s: float = QUEUE_WAIT_S,
        queue_wait_s: float | None = None,
        pool: PoolShare | None = None,
    ) -> None:
        self.limit = limit
        self.pool = pool
        """The pool the tenants' requests share, when they do (the API's); None: each tenant bounded by `limit` only."""
        self.queue = limit if queue is None else queue
        self.wait_s = wait_s
        self.queue_wait_s = wait_s if queue_wait_s is None else queue_wait_s
        """How long `admit_waiting` may wait on the event loop."""
        self._lock = threading.Lock()
        self._gates: dict[UUID, TenantGate] = {}

    def gate(self, tenant_id: UUID) -> TenantGate:
        """The tenant's gate (made on its first request)."""
        gate = self._gates.get(tenant_id)
        if gate is None:
            with self._lock:
                gate = self._gates.setdefault(tenant_id, TenantGate(self.limit, self.queue, self.pool))
        return gate

    def admit(self, tenant_id: UUID) -> Permit:
        """A permit for one request of the tenant, or 429 tenant-busy with Retry-After once the queue wait is over.

        Blocks the calling thread for at most `wait_s`: call it from a worker thread (a sync dependency).
        """
        gate = self.gate(tenant_id)
        if not gate.enter(self.wait_s):
            raise tenant_busy(tenant_id, gate.room())
        return Permit(gate, self.wait_s)

    async def admit_waiting(self, tenant_id: UUID) -> Permit:
        """A permit for one request of the tenant, waited for on the event loop (no thread is held meanwhile) for up
        to `queue_wait_s` with at most `queue` others; else 429 tenant-busy with Retry-After."""
        permit = await self.permit_waiting(tenant_id)
        if permit is None:
            raise tenant_busy(tenant_id, self.gate(tenant_id).room())
        return permit

    async def permit_waiting(self, tenant_id: UUID) -> Permit | None:
        """As `admit_waiting`, but None when no permit came: for the platform's own reads on a tenant's behalf (a
        live stream's), which wait and ask again rather than answer, so they are no refused request."""
        gate = self.gate(tenant_id)
        if gate.try_enter():
            return Permit(gate, self.wait_s)
        if not gate.join_queue():
            return None
        try:
            deadline = time.monotonic() + self.queue_wait_s
            pause = _ASYNC_FIRST_POLL_S
            # Polled: slots are given back by worker threads, and a poll that backs off to 20 ms costs the loop
            # less than a thread-to-loop wake-up per release would under a burst.
            while not gate.try_enter():
                if time.monotonic() >= deadline:
                    return None
                await asyncio.sleep(pause)
                pause = min(pause * 2, _ASYNC_POLL_S)
            return Permit(gate, self.wait_s)
        finally:
            gate.leave_queue()


def tenant_busy(tenant_id: UUID, limit: int) -> ProblemError:
    """The answer to a request over its tenant's in-flight bound: 429, like the request rate (ADR 0029). The
    service is up and serving other tenants; this client is asked to slow down, so it is no server error."""
    detail = f"This tenant already has {limit} requests in progress here; retry in {RETRY_AFTER_S} s."
    return too_many_requests(tenant_id, "tenant-busy", detail, RETRY_AFTER_S, limit=limit)


def tenant_limit(settings: Settings) -> int:
    """Requests of one tenant in flight per process: the setting, else half the tenant pool (at least one)."""
    if settings.QP_TENANT_MAX_CONCURRENT_REQUESTS is not None:
        return settings.QP_TENANT_MAX_CONCURRENT_REQUESTS
    return max(1, settings.QP_DATABASE_POOL_MAX // 2)


def worker_threads(settings: Settings) -> int:
    """Threads for sync dependencies and routes: every pooled connection in use plus as many requests waiting
    for one (or for a permit), and a few more for requests that need no connection (refusals, token checks)."""
    return max(MIN_WORKER_THREADS, 2 * settings.QP_DATABASE_POOL_MAX + 8)


@lru_cache(maxsize=1)
def get_admission() -> Admission:
    """The process-wide admission, sized from the settings."""
    settings = get_settings()
    limit = tenant_limit(settings)
    # A thread's wait is capped well below the pool's, so a request refused here is answered before one waiting on
    # the pool; a request queued on the event loop may wait as long as one request may wait for a connection.
    return Admission(
        limit,
        queue=QUEUE_PER_SLOT * limit,
        wait_s=min(QUEUE_WAIT_S, settings.QP_DATABASE_POOL_TIMEOUT_S / 4),
        queue_wait_s=settings.QP_DATABASE_POOL_TIMEOUT_S,
        pool=PoolShare(settings.QP_DATABASE_POOL_MAX),
    )


async def size_worker_threads() -> None:
    """FastAPI dependency (async: it runs on the event loop, whose thread limiter it sizes once)."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    wanted = worker_threads(get_settings())
    if limiter.total_tokens < wanted:
        limiter.total_tokens = wanted


class _Admitted(Protocol):
    @property
    def permit(self) -> Permit | None: ...


async def _pause(seconds: float, woken: asyncio.Event | None) -> None:
    if woken is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):  # not wait_for: on 3.11 it can swallow the request's cancel
            await woken.wait()


async def idle(context: _Admitted, seconds: float, woken: asyncio.Event | None = None) -> bool:
    """Sleep without the request's permit (a long poll between its reads), for `seconds` or until `woken` is set;
    False when the permit could not be had again within the queue wait, so the caller answers with what it has
    instead of waiting on."""
    permit = context.permit
    if permit is None:
        await _pause(seconds, woken)
        return True
    permit.release()
    await _pause(seconds, woken)
    # Polled without blocking rather than waited for on a worker thread: a long poll holds no thread while idle.
    deadline = time.monotonic() + permit.wait_s
    while not permit.resume():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_ASYNC_POLL_S)
    return True
