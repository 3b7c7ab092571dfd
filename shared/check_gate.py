# intent_ref: platform.rate-limits
"""A bound on the costly checks (a definition's, a start's input) a process runs at once: one per tenant, two in all."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from uuid import UUID

from shared.config import get_settings

PER_TENANT = 1
"""Costly checks of one tenant under way in a process: a definition's schemas against the meta-schema cost up to
seconds of CPU on a thread that shares the interpreter with every other request, so a tenant's burst of them made
the others' reads (and the health probe) wait on the interpreter, not on the pool."""
PER_PROCESS = 2
"""Costly checks of all tenants under way in a process: below the cores a host gives one instance, so the event loop
and the cheap requests always find the interpreter free part of the time."""
RETRY_AFTER_S = 1
UNBOUNDED = math.inf
"""A `wait_s` that waits for a slot however long it takes: for a caller with no client to answer 429 to (a child's
start in an orchestration activity), holding no connection; every slot is given back when its check ends."""
COSTLY_BYTES = 16 * 1024
"""A definition this large (as JSON) is checked under the gate; a smaller one costs milliseconds (its schemas are
few), and making it queue behind a tenant's large one would only add the large one's seconds to a cheap save."""


class _Ticket:
    """A waiter's place in the gate's queue; `admitted` once a slot was given to it."""

    __slots__ = ("admitted", "tenant_id")

    def __init__(self, tenant_id: UUID) -> None:
        self.tenant_id = tenant_id
        self.admitted = False


class CheckGate:
    """Slots for costly checks, per tenant and in all, given first come first served; a thread waits for one holding
    no connection."""

    def __init__(self, per_tenant: int = PER_TENANT, per_process: int = PER_PROCESS) -> None:
        self.per_tenant = per_tenant
        self.per_process = per_process
        self._changed = threading.Condition()
        self._by_tenant: dict[UUID, int] = {}
        self._running = 0
        self._queue: list[_Ticket] = []

    def running(self, tenant_id: UUID | None = None) -> int:
        """Checks under way (of `tenant_id`, else of every tenant)."""
        with self._changed:
            return self._running if tenant_id is None else self._by_tenant.get(tenant_id, 0)

    def waiting(self) -> int:
        """Checks waiting for a slot."""
        with self._changed:
            return len(self._queue)

    def enter(self, tenant_id: UUID, wait_s: float) -> bool:
        """Take a slot, waiting on this thread for up to `wait_s` (UNBOUNDED: until one comes); False when none
        came. A slot goes to the earliest waiter it fits (its tenant's and the process's bounds), never to a later
        arrival: a waiter's wait ends when the checks ahead of it do, however many arrive behind it."""
        deadline = time.monotonic() + wait_s
        ticket = _Ticket(tenant_id)
        with self._changed:
            self._queue.append(ticket)
            self._admit()
            try:
                while not ticket.admitted:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        # Every waiter still queued found no slot it fits: leaving holds up none of those behind.
                        self._queue.remove(ticket)
                        return False
                    # A wait's timeout must be finite: an unbounded one waits until a slot is given to it.
                    self._changed.wait(remaining if math.isfinite(remaining) else None)
            except BaseException:
                # Interrupted while waiting: the place, or the slot given meanwhile, is given back.
                if ticket.admitted:
                    self._give_back(tenant_id)
                else:
                    self._queue.remove(ticket)
                raise
            return True

    def leave(self, tenant_id: UUID) -> None:
        """Give a slot back (to the earliest waiter it fits)."""
        with self._changed:
            self._give_back(tenant_id)

    def _give_back(self, tenant_id: UUID) -> None:
        held = self._by_tenant.get(tenant_id, 0)
        if held <= 0:
            raise RuntimeError("a check slot was given back more often than taken")
        if held == 1:
            del self._by_tenant[tenant_id]
        else:
            self._by_tenant[tenant_id] = held - 1
        self._running -= 1
        self._admit()

    def _admit(self) -> None:
        """Give free slots to waiters in arrival order; a waiter whose tenant is at its bound is passed over (a slot
        another tenant can use is not kept for it), one finding the process at its bound ends the round."""
        admitted = False
        for ticket in list(self._queue):
            if self._running >= self.per_process:
                break
            if self._by_tenant.get(ticket.tenant_id, 0) >= self.per_tenant:
                continue
            self._queue.remove(ticket)
            self._by_tenant[ticket.tenant_id] = self._by_tenant.get(ticket.tenant_id, 0) + 1
            self._running += 1
            ticket.admitted = True
            admitted = True
        if admitted:
            # Each waiter looks at its own ticket: the slot was given to it here, not left for the first to wake.
            self._changed.notify_all()


@lru_cache(maxsize=1)
def get_check_gate() -> CheckGate:
    """The process-wide gate."""
    return CheckGate()


class CheckBusyError(Exception):
    """A costly check found no slot in time: the tenant's other costly check still runs here. A domain error, as the
    start path's are (issue 14's point 3): the API answers it 429 `check-busy` with Retry-After at its own edge, the
    intent-requests ingress retries its batch, the sweeper leaves the execution to a later run."""

    def __init__(self, tenant_id: UUID, limit: int) -> None:
        super().__init__(
            "This tenant already has a costly check (a large definition, or a start's large input) in progress here; "
            f"retry in {RETRY_AFTER_S} s."
        )
        self.tenant_id = tenant_id
        self.limit = limit
        self.retry_after_s = RETRY_AFTER_S


def is_costly(document: Any) -> bool:
    """Whether checking `document` (a definition, or a request body holding one) is worth a slot."""
    try:
        return len(json.dumps(document, separators=(",", ":"), default=str)) >= COSTLY_BYTES
    except (TypeError, ValueError):  # not JSON (a circular value cannot come from a request): checked as costly
        return True


@contextmanager
def costly_check(tenant_id: UUID, *, document: Any = None, wait_s: float | None = None) -> Iterator[None]:
    """A slot for one costly check of `tenant_id` while the block runs; call it holding no pooled connection (the
    wait would hold it). With `document`, only one `is_costly` takes a slot (a small one runs at once). Waits at most
    `wait_s`, by default as long as a request may wait for a connection (the bound of admission's queue too), then
    CheckBusyError; UNBOUNDED waits until a slot comes."""
    if document is not None and not is_costly(document):
        yield
        return
    gate = get_check_gate()
    if not gate.enter(tenant_id, get_settings().QP_DATABASE_POOL_TIMEOUT_S if wait_s is None else wait_s):
        raise CheckBusyError(tenant_id, gate.per_tenant)
    try:
        yield
    finally:
        gate.leave(tenant_id)
