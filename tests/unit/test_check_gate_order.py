# intent_ref: platform.rate-limits
"""The check gate gives a freed slot to the earliest waiter it fits, never to a thread arriving as it frees: a child
start waiting with no bound could otherwise wait for as long as the tenant's requests keep arriving."""

from __future__ import annotations

import threading
import time
import uuid

from shared.check_gate import UNBOUNDED, CheckGate


def _queued(gate: CheckGate, waiters: int) -> None:
    """Returns once `waiters` threads wait at `gate` (each is then queued, its place taken)."""
    for _ in range(10_000):
        if gate.waiting() >= waiters:
            return
        time.sleep(0.001)
    raise AssertionError(f"{waiters} waiter(s) never queued")


def _waiter(gate: CheckGate, tenant: uuid.UUID, wait_s: float, got: list[bool], done: threading.Event) -> None:
    got.append(gate.enter(tenant, wait_s))
    done.set()


def test_the_first_waiter_takes_a_freed_slot_before_a_later_arrival() -> None:
    gate, tenant = CheckGate(per_tenant=1, per_process=2), uuid.uuid4()
    assert gate.enter(tenant, 0)
    got: list[bool] = []
    done = threading.Event()
    first = threading.Thread(target=_waiter, args=(gate, tenant, UNBOUNDED, got, done))
    first.start()
    _queued(gate, 1)
    # The slot frees and another thread asks for it in one step (the gate's lock held across both): the queued
    # waiter has had no chance to run in between, as a request's next check on the same thread gives it none.
    with gate._changed:
        gate.leave(tenant)
        later = gate.enter(tenant, 0)
    assert later is False
    assert done.wait(30)
    assert got == [True]
    assert gate.running(tenant) == 1
    gate.leave(tenant)
    first.join(30)
    assert gate.running() == 0


def test_a_waiter_whose_time_passes_leaves_the_queue_without_holding_up_those_behind() -> None:
    gate, tenant = CheckGate(per_tenant=1, per_process=2), uuid.uuid4()
    assert gate.enter(tenant, 0)
    early_got: list[bool] = []
    early_done = threading.Event()
    early = threading.Thread(target=_waiter, args=(gate, tenant, 0.01, early_got, early_done))
    early.start()
    assert early_done.wait(30)
    assert early_got == [False]
    late_got: list[bool] = []
    late_done = threading.Event()
    late = threading.Thread(target=_waiter, args=(gate, tenant, UNBOUNDED, late_got, late_done))
    late.start()
    _queued(gate, 1)
    gate.leave(tenant)
    assert late_done.wait(30)
    assert late_got == [True]
    assert gate.waiting() == 0
    gate.leave(tenant)
    early.join(30)
    late.join(30)
    assert gate.running() == 0


def test_a_waiter_held_back_by_its_tenant_does_not_hold_back_another_tenant() -> None:
    gate, busy, other = CheckGate(per_tenant=1, per_process=2), uuid.uuid4(), uuid.uuid4()
    assert gate.enter(busy, 0)
    got: list[bool] = []
    done = threading.Event()
    queued = threading.Thread(target=_waiter, args=(gate, busy, UNBOUNDED, got, done))
    queued.start()
    _queued(gate, 1)
    assert gate.enter(other, 0)  # the process has a slot; the queued waiter's tenant does not
    gate.leave(other)
    gate.leave(busy)
    assert done.wait(30)
    assert got == [True]
    gate.leave(busy)
    queued.join(30)
    assert gate.running() == 0


def test_an_interrupted_waiter_gives_its_place_back() -> None:
    gate, tenant = CheckGate(per_tenant=1, per_process=1), uuid.uuid4()
    assert gate.enter(tenant, 0)

    class Interrupted(Exception):
        pass

    original_wait = gate._changed.wait

    def interrupted_wait(timeout: float | None = None) -> bool:
        raise Interrupted

    gate._changed.wait = interrupted_wait  # type: ignore[method-assign]
    try:
        gate.enter(tenant, UNBOUNDED)
    except Interrupted:
        pass
    else:
        raise AssertionError("the wait was not interrupted")
    finally:
        gate._changed.wait = original_wait  # type: ignore[method-assign]
    assert gate.waiting() == 0
    gate.leave(tenant)
    assert gate.running() == 0
    assert gate.enter(tenant, 0)
