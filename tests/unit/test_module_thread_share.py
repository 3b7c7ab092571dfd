# intent_ref: platform.execution
"""A process's module threads: a tenant takes at most its share, and tenants already holding threads leave some for
the tenants holding none, so two tenants' slow modules at their most cannot take every thread (ADR 0038, amended).
The count is the process's, on every event loop; a wait cancelled takes no thread, and a run cancelled keeps its
thread until it returns."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from shared.engine import module_threads
from shared.engine.module_threads import MODULE_THREADS, TENANT_SHARE, THREADS_KEPT_FREE, run_in_share

BOUND_S = 10.0
"""The longest any bounded wait here may take; reaching it fails the test."""


class _Gate:
    """A slow module: each run blocks its thread until the test opens the gate; counts the runs and how many of
    each tenant ran at once."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered: list[uuid.UUID] = []
        self.most: dict[uuid.UUID, int] = {}
        self._running: dict[uuid.UUID, int] = {}
        self._changed = threading.Condition()

    def run(self, tenant: uuid.UUID) -> Callable[[], str]:
        def slow() -> str:
            with self._changed:
                self.entered.append(tenant)
                self._running[tenant] = self._running.get(tenant, 0) + 1
                self.most[tenant] = max(self.most.get(tenant, 0), self._running[tenant])
                self._changed.notify_all()
            try:
                # Longer than any bound here: only the test opens it (in its `finally`, whatever happened).
                self.opened.wait(6 * BOUND_S)
                return "slow"
            finally:
                with self._changed:
                    self._running[tenant] -= 1

        return slow

    def wait_entered(self, tenant: uuid.UUID, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.entered.count(tenant) >= count, BOUND_S)


async def _entered(gate: _Gate, tenant: uuid.UUID, count: int) -> None:
    assert await asyncio.to_thread(gate.wait_entered, tenant, count), gate.entered


SETTLE_S = 2.0
"""How long a test's threads may take to come back after it (a run returning just as it ends)."""


def _settled() -> bool:
    """Whether no thread is held and no run waits for one, within SETTLE_S."""
    pause = threading.Event()
    for _ in range(int(SETTLE_S / 0.02)):
        if not module_threads._shares.held() and not module_threads._shares._waiting:
            return True
        pause.wait(0.02)
    return not module_threads._shares.held() and not module_threads._shares._waiting


@pytest.fixture(autouse=True)
def nothing_held() -> Iterator[None]:
    """No thread held and nobody waiting at each test's start and end: one a test leaves fails that test, not a later
    one as a thread missing."""
    shares = module_threads._shares
    assert _settled(), f"at the start: threads held {shares.held()}, {len(shares._waiting)} runs waiting"
    yield
    assert _settled(), f"at the end: threads held {shares.held()}, {len(shares._waiting)} runs waiting"


def test_two_tenants_slow_modules_at_their_most_leave_a_thread_for_a_third_tenant() -> None:
    # Each tenant's share is half the threads: two tenants' slow modules took all of them, and every other tenant's
    # item in the process waited for a thread until its deadline ("no thread was free").
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    gate = _Gate()
    second_at_most = MODULE_THREADS - TENANT_SHARE - THREADS_KEPT_FREE

    async def scenario() -> tuple[str, int]:
        slow = [asyncio.ensure_future(run_in_share(first, gate.run(first))) for _ in range(TENANT_SHARE)]
        try:
            await _entered(gate, first, TENANT_SHARE)
            slow += [asyncio.ensure_future(run_in_share(second, gate.run(second))) for _ in range(TENANT_SHARE)]
            await _entered(gate, second, second_at_most)
            # Both tenants hold as many threads as they may, and want more; the third tenant's quick module runs.
            quick = await asyncio.wait_for(run_in_share(third, lambda: "quick"), BOUND_S)
            return quick, gate.entered.count(second)
        finally:
            gate.opened.set()
            await asyncio.gather(*slow)

    assert asyncio.run(scenario()) == ("quick", second_at_most)
    # The second tenant took threads only while more than THREADS_KEPT_FREE stayed free; its others ran later.
    assert gate.entered.count(second) == TENANT_SHARE
    assert module_threads._shares.held() == {}


def test_a_tenant_alone_takes_its_whole_share_and_no_more() -> None:
    tenant = uuid.uuid4()
    gate = _Gate()

    async def scenario() -> list[str]:
        runs = [asyncio.ensure_future(run_in_share(tenant, gate.run(tenant))) for _ in range(TENANT_SHARE + 2)]
        try:
            await _entered(gate, tenant, TENANT_SHARE)
            assert module_threads._shares.held() == {tenant: TENANT_SHARE}
        finally:
            gate.opened.set()
        return await asyncio.gather(*runs)

    assert asyncio.run(scenario()) == ["slow"] * (TENANT_SHARE + 2)
    assert gate.most[tenant] == TENANT_SHARE  # the threads kept free are for others, not below its share
    assert module_threads._shares.held() == {}


def test_a_tenants_share_counts_its_runs_on_every_event_loop_of_the_process() -> None:
    # The pool is the process's: a share counted per event loop let a tenant take a share on each loop.
    tenant = uuid.uuid4()
    gate = _Gate()
    held: list[dict[uuid.UUID, int]] = []

    async def on_another_loop() -> str:
        run = asyncio.ensure_future(run_in_share(tenant, gate.run(tenant)))
        await asyncio.sleep(0.05)  # a chance to start, were it let
        assert gate.entered.count(tenant) == TENANT_SHARE
        held.append(module_threads._shares.held())
        gate.opened.set()
        return await asyncio.wait_for(run, BOUND_S)

    async def scenario() -> list[str]:
        runs = [asyncio.ensure_future(run_in_share(tenant, gate.run(tenant))) for _ in range(TENANT_SHARE)]
        try:
            await _entered(gate, tenant, TENANT_SHARE)
            # A worker's batches can run on loops of their own (as the tests' batches do, on threads).
            other = await asyncio.to_thread(asyncio.run, on_another_loop())
        finally:
            gate.opened.set()
        return [*await asyncio.gather(*runs), other]

    assert asyncio.run(scenario()) == ["slow"] * (TENANT_SHARE + 1)
    assert held == [{tenant: TENANT_SHARE}]
    assert gate.most[tenant] == TENANT_SHARE
    assert module_threads._shares.held() == {}


def test_a_wait_cancelled_takes_no_thread_and_a_run_cancelled_keeps_its_thread_until_it_returns() -> None:
    tenant = uuid.uuid4()
    gate = _Gate()
    never: list[str] = []

    async def scenario() -> tuple[dict[uuid.UUID, int], dict[uuid.UUID, int]]:
        runs = [asyncio.ensure_future(run_in_share(tenant, gate.run(tenant))) for _ in range(TENANT_SHARE)]
        try:
            await _entered(gate, tenant, TENANT_SHARE)
            waiting = [asyncio.ensure_future(run_in_share(tenant, lambda: never.append("ran"))) for _ in range(3)]
            await asyncio.sleep(0)
            for wait in waiting:
                wait.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            # A running module cannot be stopped: cancelled, it is left behind and keeps its thread.
            runs[0].cancel()
            await asyncio.gather(runs[0], return_exceptions=True)
            while_left_behind = module_threads._shares.held()
        finally:
            gate.opened.set()
        await asyncio.gather(*runs[1:])
        # The thread left behind comes back once its module returns.
        await _until_nothing_held()
        return while_left_behind, module_threads._shares.held()

    while_left_behind, after = asyncio.run(scenario())
    assert while_left_behind == {tenant: TENANT_SHARE}
    assert never == []
    assert after == {}


async def _until_nothing_held() -> None:
    for _ in range(int(BOUND_S / 0.02)):
        if not module_threads._shares.held():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"threads still held: {module_threads._shares.held()}")


def test_a_thread_coming_back_goes_past_a_wait_on_a_stopped_loop_to_the_next() -> None:
    # A loop stopped but not closed (a process's loop a test stopped) accepted the wake, which never ran there: the
    # thread taken for its wait was held for good, and the next waiter was passed over.
    tenant = uuid.uuid4()
    gate = _Gate()
    stopped = asyncio.new_event_loop()
    runner = threading.Thread(target=stopped.run_forever, daemon=True)
    never: list[str] = []

    async def scenario() -> str:
        runs = [asyncio.ensure_future(run_in_share(tenant, gate.run(tenant))) for _ in range(TENANT_SHARE)]
        try:
            await _entered(gate, tenant, TENANT_SHARE)
            runner.start()
            asyncio.run_coroutine_threadsafe(run_in_share(tenant, lambda: never.append("ran")), stopped)
            await _until_waiting(1)
            stopped.call_soon_threadsafe(stopped.stop)
            await asyncio.to_thread(runner.join, BOUND_S)
            assert not runner.is_alive() and not stopped.is_closed()
            after = asyncio.ensure_future(run_in_share(tenant, lambda: "next"))
            await _until_waiting(2)
        finally:
            gate.opened.set()
        await asyncio.gather(*runs)
        # Every thread came back: the wait on the stopped loop took none of them, and the next waiter had one.
        next_run = await asyncio.wait_for(after, BOUND_S)
        await _until_nothing_held()
        return next_run

    try:
        assert asyncio.run(scenario()) == "next"
        assert never == []
    finally:
        gate.opened.set()
        stopped.close()
    # A wait whose loop is closed is dropped the next time a thread comes back.
    asyncio.run(_taken_and_given_back(uuid.uuid4()))
    assert module_threads._shares._waiting == []


async def _taken_and_given_back(tenant: uuid.UUID) -> None:
    assert await run_in_share(tenant, lambda: "quick") == "quick"


async def _until_waiting(count: int) -> None:
    for _ in range(int(BOUND_S / 0.02)):
        if len(module_threads._shares._waiting) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(module_threads._shares._waiting)} runs waiting, not {count}")


def test_a_wait_passed_over_on_a_stopped_loop_takes_a_free_thread_once_its_loop_runs_again() -> None:
    # Passed over while its loop was stopped, the wait was looked at again only when a thread next came back: its loop
    # running again with every thread free, it waited on, with none to come back.
    tenant = uuid.uuid4()
    gate = _Gate()
    paused = asyncio.new_event_loop()
    runner = threading.Thread(target=paused.run_forever, daemon=True)

    async def scenario() -> concurrent.futures.Future[str]:
        runs = [asyncio.ensure_future(run_in_share(tenant, gate.run(tenant))) for _ in range(TENANT_SHARE)]
        try:
            await _entered(gate, tenant, TENANT_SHARE)
            runner.start()
            waiting = asyncio.run_coroutine_threadsafe(run_in_share(tenant, lambda: "woken"), paused)
            await _until_waiting(1)
            paused.call_soon_threadsafe(paused.stop)
            await asyncio.to_thread(runner.join, BOUND_S)
            assert not runner.is_alive() and not paused.is_closed()
        finally:
            gate.opened.set()
        await asyncio.gather(*runs)
        await _until_nothing_held()  # every thread free, the wait passed over
        assert len(module_threads._shares._waiting) == 1
        return waiting

    resumed = threading.Thread(target=paused.run_forever, daemon=True)
    try:
        waiting = asyncio.run(scenario())
        resumed.start()
        assert waiting.result(BOUND_S) == "woken"
    finally:
        gate.opened.set()
        if resumed.is_alive():
            paused.call_soon_threadsafe(paused.stop)
            resumed.join(BOUND_S)
        paused.close()
