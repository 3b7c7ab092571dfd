# intent_ref: platform.execution
"""A batch of `module-work` holds its partition at most BATCH_HOLD_S: items still waiting for their tenant's place
are then handed back to the hub untouched, and items still running go on in the process under their claims with a
copy handed back, instead of holding every item behind them in their partition, of every tenant (ADR 0048)."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import module_threads, worker
from shared.engine.protocol import WorkItem
from shared.engine.work_hub import Carried
from shared.modules import Module
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_module_worker_claims import (
    BOUND_S,
    _dispatched,
    _Echo,
    _Gate,
    _Raiser,
    _row,
    _until,
    gate,  # noqa: F401  # the fixture
    no_module_thread_held,  # noqa: F401  # the fixture
)

pytestmark = pytest.mark.integration

HOLD_S = 0.5
"""A batch's hold here."""


class _Hub:
    """The hub the worker hands items back to: records them, refuses them as a hub that is away does, or answers only
    once `answering` is set, as a hub slow to answer does."""

    def __init__(self, *, refuse: bool = False, answering: threading.Event | None = None) -> None:
        self.carried: list[Carried] = []
        self.refuse = refuse
        self.answering = answering
        self.called = threading.Event()

    def __call__(self, carried: Sequence[Carried]) -> None:
        self.called.set()
        if self.answering is not None:
            self.answering.wait(BOUND_S)
        if self.refuse:
            raise ConnectionError("the hub is away")
        self.carried.extend(carried)

    @property
    def items(self) -> list[WorkItem]:
        return [entry.item for entry in self.carried]

    def keys(self) -> list[str]:
        return sorted(str(item.execution_id) for item in self.items)


class _Worker:
    """A worker process's event loop, running for the whole test as the Functions worker's does: what goes on past
    a batch's hold runs on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def batch(
        self,
        items: Sequence[WorkItem],
        raiser: _Raiser,
        modules: Mapping[str, Module[Any]],
        hub: _Hub,
        traceparents: Sequence[str | None] = (),
        first_enqueued: Sequence[str | None] = (),
    ) -> Future[int]:
        bodies = [item.model_dump_json() for item in items]
        return asyncio.run_coroutine_threadsafe(
            worker.process_batch(bodies, raiser, modules, traceparents, hub, first_enqueued), self.loop
        )

    def going_on(self) -> int:
        async def count() -> int:
            # This process's: a loop a test stopped (a process gone) leaves its tasks unended in the module's set.
            return sum(1 for task in worker._going_on if task.get_loop() is self.loop)

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(BOUND_S)

    def stop(self) -> None:
        """The process ends: what runs on its loop is cancelled (a module running on a thread is left behind), and
        the loop stopped and closed, so that nothing of it waits on (or holds) the process's module threads."""
        if self.loop.is_closed():
            return

        async def cancelled() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancelled(), self.loop).result(BOUND_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(BOUND_S)
        assert not self._thread.is_alive(), "the worker's loop did not stop"
        self.loop.close()


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision("batch-hold").id


@pytest.fixture
def process(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Worker]:
    monkeypatch.setattr(worker, "BATCH_HOLD_S", HOLD_S)
    running = _Worker()
    yield running
    running.stop()


def _traceparent(index: int) -> str:
    return f"00-{index:032x}-{index:016x}-01"


def test_a_batch_of_slow_items_ends_at_its_hold_the_running_go_on_and_every_one_is_handed_back(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, process: _Worker
) -> None:
    places = module_threads.TENANT_ADMITTED
    slow = [_dispatched(app_pool, tenant, gate.action) for _ in range(places + 3)]
    raiser, hub = _Raiser(), _Hub()
    parents = [_traceparent(index + 1) for index in range(len(slow))]
    firsts = [f"2026-12-07T08:00:{index:02d}+00:00" for index in range(len(slow))]
    batch = process.batch(slow, raiser, {gate.action: gate}, hub, parents, firsts)
    # Ended at its hold with the gate still shut: before, it held its partition until the last item had run.
    assert batch.result(BOUND_S) == 0
    assert not gate.opened.is_set() and len(gate.runs) == module_threads.TENANT_SHARE
    assert hub.keys() == sorted(str(item.execution_id) for item in slow)
    # Each with its dispatch's trace context and the time it first went on the hub, which its wait counts from.
    assert sorted((c.traceparent, c.first_enqueued) for c in hub.carried) == sorted(zip(parents, firsts, strict=True))
    claimed = [item for item in slow if _row(app_pool, item)["claims"] > 0]
    assert len(claimed) == places  # the items past the tenant's places waited untouched
    # Only those whose modules run go on: the ones still waiting for a thread were given up, their claims let go.
    assert process.going_on() == module_threads.TENANT_SHARE
    # The copies come while their originals still run: no item runs twice, and the batch ends at its hold again.
    again = _Hub()
    assert process.batch(hub.items, _Raiser(), {gate.action: gate}, again).result(BOUND_S) == 0
    assert again.keys() == hub.keys() and len(gate.runs) == module_threads.TENANT_SHARE
    gate.opened.set()
    # What went on ends in this process and raises its verdicts, as it would have inside the batch.
    assert raiser.wait_for(lambda raised: len(raised) == module_threads.TENANT_SHARE)
    assert _until(lambda: process.going_on() == 0)
    ran = [item for item in slow if _row(app_pool, item)["state"] == "succeeded"]
    assert len(ran) == module_threads.TENANT_SHARE
    # The copies' batch: the ones that ran raise their recorded verdicts again, the others run, once each.
    last = _Hub()
    assert process.batch(again.items, _Raiser(), {gate.action: gate}, last).result(BOUND_S) == len(slow)
    assert last.items == []
    assert all(_row(app_pool, item)["state"] == "succeeded" for item in slow)
    assert sorted(gate.runs) == sorted(f"{item.execution_id}:work:1" for item in slow)


def test_an_item_still_waiting_for_a_thread_at_the_hold_is_given_up_and_its_copy_claims_it_at_once(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, process: _Worker
) -> None:
    share = module_threads.TENANT_SHARE
    # A place each, so every item claims; past the tenant's share of the threads they wait for one under their claims.
    items = [_dispatched(app_pool, tenant, gate.action) for _ in range(share + 2)]
    hub = _Hub()
    assert process.batch(items, _Raiser(), {gate.action: gate}, hub).result(BOUND_S) == 0
    assert hub.keys() == sorted(str(item.execution_id) for item in items)
    # Only the items whose modules run go on: the others were stopped as waiting ones are, their claims let go,
    # instead of going on to hold (and renew) their claims here until a thread comes free.
    assert len(gate.runs) == share and process.going_on() == share
    waited = [item for item in items if f"{item.execution_id}:work:1" not in gate.runs]
    assert len(waited) == 2 and all(_let_go(app_pool, item) for item in waited)
    gate.opened.set()
    assert _until(lambda: process.going_on() == 0)
    assert len(gate.runs) == share  # the ones given up never start here, threads free or not
    # Their copies, in another process, claim them at once and run them (here, the same action answering at once).
    other, raiser, stand_in = _Worker(), _Raiser(), _Echo()
    try:
        copies = [carried.item for carried in hub.carried if carried.item in waited]
        assert other.batch(copies, raiser, {gate.action: stand_in}, _Hub()).result(BOUND_S) == len(waited)
    finally:
        other.stop()
    assert sorted(stand_in.runs) == sorted(f"{item.execution_id}:work:1" for item in waited)
    assert all(_row(app_pool, item)["state"] == "succeeded" for item in items)


def _let_go(pool: ConnectionPool[Any], item: WorkItem) -> bool:
    """Whether the item's attempt is claimable at once: nobody's claim holds it."""
    with tenant_transaction(item.tenant_id, pool=pool) as conn:
        row = conn.execute(
            "SELECT claimed_until <= clock_timestamp() AS let_go FROM app.step_attempts"
            " WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s",
            (item.execution_id, item.step_id, item.phase, item.attempt),
        ).fetchone()
    return bool(row and row["let_go"])


def test_quick_items_end_within_the_hold_and_none_is_handed_back(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, process: _Worker
) -> None:
    echo = _Echo()
    items = [_dispatched(app_pool, tenant, echo.action) for _ in range(module_threads.TENANT_ADMITTED * 3)]
    hub = _Hub()
    assert process.batch(items, _Raiser(), {echo.action: echo}, hub).result(BOUND_S) == len(items)
    assert hub.items == [] and process.going_on() == 0
    assert len(echo.runs) == len(items)


def test_a_copy_taken_over_when_the_process_that_ran_its_original_is_gone(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, process: _Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "LEASE_S", 1.0)  # the original's claim lapses soon after its process is gone
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    item = _dispatched(app_pool, tenant, gate.action)
    hub = _Hub()
    assert process.batch([item], _Raiser(), {gate.action: gate}, hub).result(BOUND_S) == 0
    assert _until(lambda: len(gate.runs) == 1) and len(hub.items) == 1
    process.stop()  # the process dies: its loop stops, and with it the claim's renewals (its thread is left behind)
    successor, raiser = _Worker(), _Raiser()
    stand_in = _Echo()  # the copy runs the same action, which here answers at once

    def copy_answered() -> bool:
        # Each batch holds at most its hold: until the claim lapses the copy waits in it, then comes round again.
        if not raiser.to(item.execution_id):
            successor.batch(hub.items, raiser, {gate.action: stand_in}, _Hub()).result(BOUND_S)
        return bool(raiser.to(item.execution_id))

    try:
        assert _until(copy_answered)
        assert stand_in.runs == [f"{item.execution_id}:work:1"]
        assert _row(app_pool, item)["state"] == "succeeded"
    finally:
        gate.opened.set()
        successor.stop()


def test_a_hand_back_the_hub_refuses_fails_the_batch_after_the_others_were_answered(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, api: ApiHarness, process: _Worker
) -> None:
    other = api.provision("batch-hold-other").id
    echo = _Echo()
    slow = _dispatched(app_pool, tenant, gate.action)
    quick = _dispatched(app_pool, other, echo.action)
    raiser = _Raiser()
    batch = process.batch([slow, quick], raiser, {gate.action: gate, echo.action: echo}, _Hub(refuse=True))
    # Failed, so that its checkpoint does not pass an item neither done nor back on the hub: the batch comes again.
    with pytest.raises(RuntimeError):
        batch.result(BOUND_S)
    assert raiser.to(quick.execution_id) and _row(app_pool, quick)["state"] == "succeeded"
    gate.opened.set()
    assert _until(lambda: _row(app_pool, slow)["state"] == "succeeded")  # it went on all the same


def test_a_copy_that_finds_its_attempt_held_is_handed_back_at_the_hold_and_nothing_runs_twice(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, process: _Worker
) -> None:
    item = _dispatched(app_pool, tenant, gate.action)
    hub = _Hub()
    assert process.batch([item], _Raiser(), {gate.action: gate}, hub).result(BOUND_S) == 0
    assert process.going_on() == 1
    # The copy has a place (its tenant holds one of eight), claims, finds the original holding the attempt and waits
    # for it: only within its batch's hold, then it goes round again, untouched.
    copies, raiser = _Hub(), _Raiser()
    assert process.batch(hub.items, raiser, {gate.action: gate}, copies).result(BOUND_S) == 0
    assert copies.keys() == hub.keys()
    assert process.going_on() == 1 and len(gate.runs) == 1
    gate.opened.set()
    assert _until(lambda: process.going_on() == 0)
    assert raiser.raised == [] and gate.runs == [f"{item.execution_id}:work:1"]


def test_a_copy_still_claiming_at_the_hold_goes_on_only_until_it_finds_the_attempt_held(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, process: _Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = _dispatched(app_pool, tenant, gate.action)
    hub = _Hub()
    assert process.batch([item], _Raiser(), {gate.action: gate}, hub).result(BOUND_S) == 0
    claim = worker._claim

    def slow_claim(*args: Any) -> Any:
        threading.Event().wait(HOLD_S * 2)  # a database slow to answer: the copy is mid-claim at its hold's end
        return claim(*args)

    monkeypatch.setattr(worker, "_claim", slow_claim)
    copies, raiser = _Hub(), _Raiser()
    assert process.batch(hub.items, raiser, {gate.action: gate}, copies).result(BOUND_S) == 0
    assert process.going_on() == 2 and copies.keys() == hub.keys()  # it went on, with a copy handed back
    # Its claim answers that the original holds the attempt: it ends there, its copy on the hub answering for it,
    # instead of waiting in the background as long as the original runs (holding a place, asking every half second).
    assert _until(lambda: process.going_on() == 1)
    gate.opened.set()
    assert _until(lambda: process.going_on() == 0)
    assert raiser.raised == [] and len(gate.runs) == 1


def test_a_hand_back_slow_to_answer_holds_up_no_other_items_claim(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, api: ApiHarness, process: _Worker
) -> None:
    other = api.provision("batch-hold-slow-hub").id
    answering = threading.Event()
    # As many hand-backs at once as the threads the claims and their renewals run on: on those threads, the claims of
    # every other item in the process waited for the hub, and a claim not renewed in time let a copy take it over.
    hanging = min(32, (os.cpu_count() or 1) + 4)
    hubs = [_Hub(answering=answering) for _ in range(hanging)]
    try:
        batches = [
            process.batch([_dispatched(app_pool, tenant, gate.action)], _Raiser(), {gate.action: gate}, hub)
            for hub in hubs
        ]
        assert _until(lambda: sum(hub.called.is_set() for hub in hubs) >= worker.HAND_BACK_THREADS)
        echo = _Echo()
        quick = [_dispatched(app_pool, other, echo.action) for _ in range(3)]
        assert process.batch(quick, _Raiser(), {echo.action: echo}, _Hub()).result(BOUND_S) == len(quick)
    finally:
        answering.set()
    for batch in batches:
        batch.result(BOUND_S)
    gate.opened.set()
    assert _until(lambda: process.going_on() == 0)


def test_a_hand_back_not_sent_within_its_bound_fails_the_batch(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, process: _Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "HAND_BACK_TIMEOUT_S", HOLD_S)
    answering = threading.Event()
    try:
        batch = process.batch(
            [_dispatched(app_pool, tenant, gate.action)], _Raiser(), {gate.action: gate}, _Hub(answering=answering)
        )
        with pytest.raises(RuntimeError):  # the batch comes again, rather than its partition waiting on the hub
            batch.result(HOLD_S * 6)
    finally:
        answering.set()
        gate.opened.set()
    assert _until(lambda: process.going_on() == 0)
