# intent_ref: platform.execution
"""A live holder whose claim renewals stall never runs its module beside the copy that takes the claim over: the
renewals go on threads of their own, not behind the event loop's default executor, and a holder that has had none
confirmed for most of its lease gives its run up before any copy may take the claim over, recording nothing while
the claim is not its own again. A renewal waits for a lock only briefly, so one tenant's locked rows make no other
tenant's holder give up; a holder that gave up takes its claim back once the database answers and records the result
its module had; a renewal that lands after its claim's release holds nothing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar

import psycopg
import pytest
from azure.core.exceptions import ServiceRequestError
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from shared.db.session import tenant_transaction
from shared.engine import module_threads, payloads, worker
from shared.engine import steps as store
from shared.engine.payloads import is_blob_ref
from shared.engine.protocol import WorkItem
from shared.engine.steps import AttemptKey
from shared.modules import Module, ModuleContext, StepFailed, artifact_write
from shared.modules.contract import Abandoned
from shared.tenants import offboarding
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_module_work_hand_back import _Worker
from tests.integration.test_module_worker_claims import (
    BOUND_S,
    _Batch,
    _dispatched,
    _held_whole,
    _Raiser,
    _row,
    _until,
    batches_held_whole,  # noqa: F401  # the fixture
    no_module_thread_held,  # noqa: F401  # the fixture
)
from tests.integration.test_worker_cancel_while_queued import _cancel

pytestmark = pytest.mark.integration

DEFAULT_THREADS = 2
"""The threads of the holder's event loop's default executor here, all of which the test keeps busy."""


class _NoParams(BaseModel):
    pass


class _Overlap(Module[_NoParams]):
    """Runs until the test opens it or its attempt is abandoned (or BOUND_S passes); numbers its runs and counts how
    many ran at once."""

    action: ClassVar[str] = "test.overlap"
    params_model = _NoParams

    def __init__(self) -> None:
        self.runs = 0
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.most_at_once = 0
        self._running = 0
        self._lock = threading.Lock()

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        with self._lock:
            self.runs += 1
            run = self.runs
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        self.entered.set()
        try:
            waited = threading.Event()
            for _ in range(int(BOUND_S / 0.01)):
                if self.opened.is_set() or ctx.abandoned.is_set():
                    break
                waited.wait(0.01)
            return {"run": run}
        finally:
            with self._lock:
                self._running -= 1


class _Renewals:
    """`store.renew_claim`, counting each owner's confirmed renewals; one owner's stall (a database that does not
    answer it) until `released`."""

    def __init__(self) -> None:
        self.confirmed: collections.Counter[str] = collections.Counter()
        self.stalled: str | None = None
        self.released = threading.Event()
        self._renew = store.renew_claim
        self._lock = threading.Lock()

    def __call__(self, conn: store.Conn, key: AttemptKey, *, owner: str, lease_s: float) -> bool:
        if owner == self.stalled:
            self.released.wait(BOUND_S)
        held = self._renew(conn, key, owner=owner, lease_s=lease_s)
        if held:
            with self._lock:
                self.confirmed[owner] += 1
        return held


class _Records:
    """`worker._record`, counting the results recorded."""

    def __init__(self) -> None:
        self.count = 0
        self._record = worker._record
        self._lock = threading.Lock()

    def __call__(self, item: WorkItem, key: AttemptKey, result: dict[str, Any]) -> Any:
        with self._lock:
            self.count += 1
        return self._record(item, key, result)


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811
    return api.provision("stalled-renewal").id


@pytest.fixture
def renewals(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Renewals]:
    observed = _Renewals()
    monkeypatch.setattr(store, "renew_claim", observed)
    yield observed
    observed.released.set()


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> _Records:
    observed = _Records()
    monkeypatch.setattr(worker, "_record", observed)
    return observed


@pytest.fixture
def overlap() -> Iterator[_Overlap]:
    module = _Overlap()
    yield module
    module.opened.set()  # never leave a worker thread behind for the next test


@pytest.fixture
def holder_process() -> Iterator[_Worker]:
    """The holder's worker process: an event loop whose default executor has DEFAULT_THREADS threads."""
    running = _Worker()
    running.loop.set_default_executor(ThreadPoolExecutor(DEFAULT_THREADS, thread_name_prefix="stalled-default"))
    yield running
    running.stop()


def _saturated(process: _Worker, released: threading.Event) -> list[Future[bool]]:
    """Every thread of the process's default executor busy until `released`, as other async functions of the
    process (a token's verification, a start) keep it busy; returns once they all are."""
    busy = threading.Semaphore(0)

    def hold() -> bool:
        busy.release()
        return released.wait(BOUND_S)

    async def held() -> bool:
        return await asyncio.to_thread(hold)

    blockers = [asyncio.run_coroutine_threadsafe(held(), process.loop) for _ in range(DEFAULT_THREADS)]
    for _ in blockers:
        assert busy.acquire(timeout=BOUND_S)
    return blockers


def test_a_holder_whose_default_executor_is_saturated_keeps_renewing_and_the_module_runs_once(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    overlap: _Overlap,
    renewals: _Renewals,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "LEASE_S", 1.5)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.5)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    modules = {overlap.action: overlap}
    item = _dispatched(app_pool, tenant, overlap.action)
    raiser = _Raiser()
    first = holder_process.batch([item], raiser, modules, _held_whole)
    assert overlap.entered.wait(BOUND_S)
    holder = _row(app_pool, item)["claimed_by"]
    released = threading.Event()
    try:
        blockers = _saturated(holder_process, released)
        second = _Batch([item], raiser, modules)  # a copy, on another instance
        second.start()
        # Six renewals confirmed, three seconds of heartbeats, outlast the claim with its grace (two seconds here):
        # renewals that waited behind the saturated executor let the copy take it over and run it a second time.
        assert _until(lambda: renewals.confirmed[holder] >= 6 or overlap.runs > 1)
        assert overlap.runs == 1
    finally:
        released.set()
        overlap.opened.set()
    assert all(blocker.result(BOUND_S) for blocker in blockers)
    assert first.result(BOUND_S) == 1 and second.outcome() == 1  # the copy raises the recorded verdict again
    assert overlap.runs == 1 and overlap.most_at_once == 1
    assert records.count == 1
    verdict = {"ok": True, "output": {"run": 1}}
    assert raiser.to(item.execution_id) == [verdict, verdict]
    row = _row(app_pool, item)
    assert (row["state"], row["claims"], row["claimed_by"]) == ("succeeded", 1, holder)


def test_a_holder_whose_renewals_stall_gives_up_before_a_copy_takes_over_and_records_nothing(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    overlap: _Overlap,
    renewals: _Renewals,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "LEASE_S", 3.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.5)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    modules = {overlap.action: overlap}
    item = _dispatched(app_pool, tenant, overlap.action)
    raiser = _Raiser()
    first = holder_process.batch([item], raiser, modules, _held_whole)
    assert overlap.entered.wait(BOUND_S)
    holder = _row(app_pool, item)["claimed_by"]
    renewals.stalled = holder  # the database answers none of the holder's renewals any more
    second = _Batch([item], raiser, modules)
    second.start()
    try:
        # The copy takes the claim over once it has lapsed; by then the holder has given its run up.
        assert _until(lambda: overlap.runs == 2)
    finally:
        overlap.opened.set()
        renewals.released.set()
    assert first.result(BOUND_S) == 0 and second.outcome() == 1
    assert overlap.most_at_once == 1  # the holder's run had ended, abandoned, before the copy's started
    assert records.count == 1  # the copy's result only: the holder that gave up recorded nothing
    assert raiser.to(item.execution_id) == [{"ok": True, "output": {"run": 2}}]
    row = _row(app_pool, item)
    assert (row["state"], row["claims"]) == ("succeeded", 2) and row["claimed_by"] != holder


class _Held(Module[_NoParams]):
    """Runs until the test opens it or its attempt is abandoned (or BOUND_S passes); answers whether it was
    abandoned, and numbers each attempt's runs."""

    action: ClassVar[str] = "test.held"
    params_model = _NoParams

    def __init__(self) -> None:
        self.runs: collections.Counter[str] = collections.Counter()
        self.opened = threading.Event()
        self._lock = threading.Lock()

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        with self._lock:
            self.runs[ctx.idempotency_key] += 1
        waited = threading.Event()
        for _ in range(int(BOUND_S / 0.01)):
            if self.opened.is_set() or ctx.abandoned.is_set():
                break
            waited.wait(0.01)
        return {"abandoned": ctx.abandoned.is_set()}


def _locked_for(pool: ConnectionPool[Any], items: list[WorkItem], seconds: float, locked: threading.Event) -> None:
    """The items' attempt rows locked by another transaction (an administrator's, say) for `seconds`."""
    with tenant_transaction(items[0].tenant_id, pool=pool) as conn:
        conn.execute(
            "SELECT 1 FROM app.step_attempts WHERE execution_id = ANY(%s) FOR UPDATE",
            ([item.execution_id for item in items],),
        ).fetchall()
        locked.set()
        threading.Event().wait(seconds)


def test_one_tenants_locked_claims_make_no_other_tenants_holder_give_up(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "LEASE_S", 3.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 1.0)
    other = api.provision("stalled-renewal-other").id
    held = _Held()
    modules = {held.action: held}
    # As many of one tenant's attempts as there are renewal threads (those past its share of the module threads wait
    # for one under their claims, renewing them all the same), and one of another tenant's.
    assert worker.RENEWAL_THREADS <= module_threads.TENANT_ADMITTED
    locked_items = [_dispatched(app_pool, tenant, held.action) for _ in range(worker.RENEWAL_THREADS)]
    free = _dispatched(app_pool, other, held.action)
    raiser = _Raiser()
    batch = holder_process.batch([*locked_items, free], raiser, modules, _held_whole)
    try:
        assert _until(lambda: sum(held.runs.values()) == module_threads.TENANT_SHARE + 1)
        locked = threading.Event()
        # Longer than a holder keeps its claim with no renewal confirmed: the locked tenant's holders give up.
        locker = threading.Thread(
            target=_locked_for, args=(app_pool, locked_items, worker.LEASE_S * 1.5, locked), daemon=True
        )
        locker.start()
        assert locked.wait(BOUND_S)
        locker.join(BOUND_S)
        assert not locker.is_alive()
    finally:
        held.opened.set()
    assert batch.result(BOUND_S) == len(locked_items) + 1
    # The other tenant's holder renewed throughout: its renewals did not wait behind the locked ones, it never gave
    # up, and its module ran to its end, once.
    row = _row(app_pool, free)
    assert (row["state"], row["output"], row["claims"]) == ("succeeded", {"abandoned": False}, 1)
    assert held.runs[f"{free.execution_id}:work:1"] == 1
    # The locked ones were each taken back by their holders once the lock was let go, and recorded once.
    assert all(_row(app_pool, item)["state"] == "succeeded" for item in locked_items)
    assert all(count == 1 for count in held.runs.values())


def test_a_holder_that_gave_up_in_an_outage_longer_than_its_lease_records_its_result_once_it_is_back(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    overlap: _Overlap,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    outage = threading.Event()
    reachable = worker.tenant_transaction

    @contextlib.contextmanager
    def out_of_reach(tenant_id: uuid.UUID, **kwargs: Any) -> Iterator[Any]:
        if outage.is_set():
            raise psycopg.OperationalError("the database is out of reach")
        with reachable(tenant_id, **kwargs) as conn:
            yield conn

    monkeypatch.setattr(worker, "tenant_transaction", out_of_reach)
    modules = {overlap.action: overlap}
    item = _dispatched(app_pool, tenant, overlap.action)
    # One holder and no copy (the batch's retries ran out during the outage): nobody else is left to run it.
    ran = asyncio.run_coroutine_threadsafe(worker.run_attempt(item, modules), holder_process.loop)
    try:
        assert overlap.entered.wait(BOUND_S)
        holder = _row(app_pool, item)["claimed_by"]
        outage.set()
        # The holder gives up (its module is told it is abandoned, and returns) ...
        assert _until(lambda: overlap.runs == 1 and overlap.most_at_once == 1 and overlap._running == 0)
        # ... and the outage outlasts the claim in the database too.
        threading.Event().wait(worker.LEASE_S * (1 + worker.TAKEOVER_GRACE) * 1.5)
    finally:
        outage.clear()
        overlap.opened.set()
    outcome = ran.result(BOUND_S)
    # Back, it takes its own claim back and records the result its module had, rather than running it again.
    assert outcome is not None and outcome.verdict == {"ok": True, "output": {"run": 1}}
    assert overlap.runs == 1 and records.count == 1
    row = _row(app_pool, item)
    assert (row["state"], row["claimed_by"], row["claims"]) == ("succeeded", holder, 1)


def test_a_renewal_that_lands_after_the_release_holds_nothing(app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    # A run given up while it waited for a thread: its copy lets the claim go, and the module thread that took the run
    # a moment before (`_run_module`: not given up yet, so it renews) has its renewal land after the release.
    item = _dispatched(app_pool, tenant, "test.held")
    key = AttemptKey(item.execution_id, item.step_id, item.phase, item.attempt)
    claim, _ = worker._claim(item, key, "holder", 60.0)
    assert claim.outcome == "claimed"
    start = worker._Start()
    assert start.give_up()
    worker._release(item, key, "holder")
    assert not worker._still_held(item, key, "holder")  # the renewal in flight holds nothing again
    assert not start.begin()
    # Claimable at once, and by no takeover: nobody held it.
    again, _ = worker._claim(item, key, "copy", 60.0)
    assert (again.outcome, again.holder) == ("claimed", None)


class _WaitsHealthy(Module[_NoParams]):
    """As http.wait_healthy does: waits until the test opens it, failing at once (`Abandoned`) when told its attempt
    is abandoned; a run that finds it open succeeds. Numbers its runs."""

    action: ClassVar[str] = "test.waits_healthy"
    params_model = _NoParams

    def __init__(self) -> None:
        self.runs = 0
        self.ended = 0
        self.opened = threading.Event()
        self._lock = threading.Lock()

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        with self._lock:
            self.runs += 1
            run = self.runs
        try:
            waited = threading.Event()
            for _ in range(int(BOUND_S / 0.01)):
                if self.opened.is_set():
                    return {"run": run}
                if ctx.abandoned.is_set():
                    raise Abandoned("not healthy when its attempt was abandoned")
                waited.wait(0.01)
            raise StepFailed("never opened")
        finally:
            with self._lock:
                self.ended += 1


def _out_of_reach_while(outage: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's transactions fail while `outage` is set (the database out of reach)."""
    reachable = worker.tenant_transaction

    @contextlib.contextmanager
    def out_of_reach(tenant_id: uuid.UUID, **kwargs: Any) -> Iterator[Any]:
        if outage.is_set():
            raise psycopg.OperationalError("the database is out of reach")
        with reachable(tenant_id, **kwargs) as conn:
            yield conn

    monkeypatch.setattr(worker, "tenant_transaction", out_of_reach)


def test_a_failure_its_module_returned_because_of_the_give_up_is_not_recorded_and_it_runs_again(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An outage a little longer than the holder keeps its claim unconfirmed, over before the claim lapses: the holder
    # gives up, its module fails at once for being told so, and the holder renews its claim once the database is
    # back. That failure was recorded as the step's, where before the give-up took it back nothing was.
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    outage = threading.Event()
    _out_of_reach_while(outage, monkeypatch)
    module = _WaitsHealthy()
    item = _dispatched(app_pool, tenant, module.action)
    ran = asyncio.run_coroutine_threadsafe(worker.run_attempt(item, {module.action: module}), holder_process.loop)
    try:
        assert _until(lambda: module.runs == 1)
        holder = _row(app_pool, item)["claimed_by"]
        outage.set()
        assert _until(lambda: module.ended == 1)  # given up, and failed for it
    finally:
        outage.clear()
        module.opened.set()
    outcome = ran.result(BOUND_S)
    # Its claim back, the attempt ran again under it, and only that run's result was recorded.
    assert outcome is not None and outcome.verdict == {"ok": True, "output": {"run": 2}}
    assert module.runs == 2 and records.count == 1
    row = _row(app_pool, item)
    assert (row["state"], row["claimed_by"], row["output"]) == ("succeeded", holder, {"run": 2})


def test_a_holder_whose_taking_back_gets_no_answer_ends_at_its_deadline(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    overlap: _Overlap,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A connection that stops answering (no server-side timeout reaches it): the taking back waited on it for good,
    # the holder past its deadline holding its tenant's place and a renewal thread.
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    outage = threading.Event()
    _out_of_reach_while(outage, monkeypatch)
    unanswered = threading.Event()
    asked = threading.Semaphore(0)

    def never_answered(*args: Any) -> Any:
        asked.release()
        unanswered.wait(BOUND_S * 2)
        raise psycopg.OperationalError("the connection stopped answering")

    monkeypatch.setattr(worker, "_take_back", never_answered)
    modules = {overlap.action: overlap}
    item = _dispatched(app_pool, tenant, overlap.action, timeout_s=3)
    batch = holder_process.batch([item], _Raiser(), modules, _held_whole)
    try:
        assert overlap.entered.wait(BOUND_S)
        outage.set()
        assert asked.acquire(timeout=BOUND_S)  # given up, its taking back sent and never answered
        # It ends (its deadline passed without its claim back), its tenant's place freed, while the look it sent
        # still gets no answer; that one look was the only one sent.
        assert batch.result(BOUND_S) == 0
        assert not unanswered.is_set() and not asked.acquire(blocking=False)
    finally:
        unanswered.set()
        outage.clear()
    assert records.count == 0


def test_a_holder_that_gave_up_stops_waiting_once_another_copy_holds_the_claim(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    overlap: _Overlap,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A holder that gave up watched the claim a copy took over until its own deadline (an hour, at most), holding its
    # tenant's place all that time, where a copy handed back stops at once: the holder answers for the attempt.
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    modules = {overlap.action: overlap}
    item = _dispatched(app_pool, tenant, overlap.action, timeout_s=600)
    raiser = _Raiser()
    first = holder_process.batch([item], raiser, modules, _held_whole)
    assert overlap.entered.wait(BOUND_S)
    holder = _row(app_pool, item)["claimed_by"]
    copy_runs = threading.Event()
    renew, take_back = worker._still_held, worker._take_back

    def unconfirmed(item: WorkItem, key: AttemptKey, owner: str) -> bool:
        if owner == holder:
            raise psycopg.OperationalError("the database is out of reach")
        return renew(item, key, owner)

    def out_of_reach_until_the_copy_runs(item: WorkItem, key: AttemptKey, owner: str, timeout_s: float) -> Any:
        if not copy_runs.is_set():
            raise psycopg.OperationalError("the database is out of reach")
        return take_back(item, key, owner, timeout_s)

    monkeypatch.setattr(worker, "_still_held", unconfirmed)
    monkeypatch.setattr(worker, "_take_back", out_of_reach_until_the_copy_runs)
    second = _Batch([item], raiser, modules)
    second.start()
    try:
        assert _until(lambda: overlap.runs == 2)  # the copy took the claim over, and runs it
        copy_runs.set()
        # The holder sees the claim is the copy's and ends, the copy still running.
        assert first.result(BOUND_S) == 0
        assert overlap._running == 1 and records.count == 0
    finally:
        overlap.opened.set()
    assert second.outcome() == 1
    assert records.count == 1 and raiser.to(item.execution_id) == [{"ok": True, "output": {"run": 2}}]
    row = _row(app_pool, item)
    assert (row["state"], row["claims"]) == ("succeeded", 2) and row["claimed_by"] != holder


class _EndsAfterTheGiveUp(Module[_NoParams]):
    """Waits until told its attempt is abandoned (`told`), then until the test opens it, and ends as `ending` says:
    an output too large to keep inline, or a failure of its own, one not retried (a 409 an HTTP call met) or one
    retried (a 503). Later runs succeed at once. Numbers its runs."""

    action: ClassVar[str] = "test.ends_after_the_give_up"
    params_model = _NoParams

    def __init__(self, ending: str) -> None:
        self.ending = ending
        self.runs = 0
        self.told = threading.Event()
        self.opened = threading.Event()
        self._lock = threading.Lock()

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        with self._lock:
            self.runs += 1
            run = self.runs
        if run > 1:
            return {"run": run}
        if ctx.abandoned.wait(BOUND_S):
            self.told.set()
        self.opened.wait(BOUND_S)
        if self.ending == "large":
            return {"run": run, "pad": "x" * 70_000}
        if self.ending == "conflict":
            raise StepFailed("409 Conflict: the deployment exists", retryable=False)
        raise StepFailed("503 Service Unavailable: the deployment service is busy")


@pytest.mark.parametrize("ending", ["large", "conflict", "unavailable"])
def test_what_a_module_ends_with_after_the_give_up_of_its_own_accord_is_recorded_and_it_does_not_run_again(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
    ending: str,
) -> None:
    # Told its attempt was abandoned, a module that ends all the same has its result: a success whose output, too
    # large to keep inline, was then stored under the give-up (and failed at once for it), and a failure of its own
    # (an HTTP call's 409 or 503, which never looks at the give-up) were all taken for the give-up's doing, not
    # recorded, and the module run again.
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    outage = threading.Event()
    _out_of_reach_while(outage, monkeypatch)
    module = _EndsAfterTheGiveUp(ending)
    item = _dispatched(app_pool, tenant, module.action)
    ran = asyncio.run_coroutine_threadsafe(worker.run_attempt(item, {module.action: module}), holder_process.loop)
    try:
        assert _until(lambda: module.runs == 1)
        outage.set()
        assert module.told.wait(BOUND_S)  # given up
    finally:
        outage.clear()
        module.opened.set()
    outcome = ran.result(BOUND_S)
    assert outcome is not None
    assert module.runs == 1 and records.count == 1
    row = _row(app_pool, item)
    if ending == "large":
        assert outcome.verdict["ok"] and is_blob_ref(outcome.verdict["output"])
        assert row["state"] == "succeeded" and is_blob_ref(row["output"])
    else:
        said = "409 Conflict" if ending == "conflict" else "503 Service Unavailable"
        assert not outcome.verdict["ok"] and said in str(outcome.verdict)
        assert row["state"] == "failed" and said in str(row["error"])


def test_a_run_the_give_up_stops_short_runs_again_once_only(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A database that keeps dropping out gave up each run in turn, and each was run again: one more run per outage,
    # as long as the deadline lasted. The second run stopped short is recorded (a retryable failure: the attempt's
    # retries take over).
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    outage = threading.Event()
    _out_of_reach_while(outage, monkeypatch)
    module = _WaitsHealthy()
    item = _dispatched(app_pool, tenant, module.action)
    ran = asyncio.run_coroutine_threadsafe(worker.run_attempt(item, {module.action: module}), holder_process.loop)
    try:
        for run in (1, 2):
            assert _until(lambda run=run: module.runs == run)
            outage.set()
            assert _until(lambda run=run: module.ended == run)  # given up, and stopped short for it
            outage.clear()
        outcome = ran.result(BOUND_S)
    finally:
        outage.clear()
        module.opened.set()
    assert outcome is not None and not outcome.verdict["ok"]
    assert "abandoned" in str(outcome.verdict)
    assert module.runs == 2 and records.count == 1
    assert _row(app_pool, item)["state"] == "failed"


def test_a_large_output_stored_while_the_database_is_still_out_of_reach_fails_no_batch_and_its_module_runs_once(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A module that ends with a large output during the outage behind its give-up: the store's look at its tenant
    # (`kept_for_tenant`) met the database out of reach, and its error, neither a step failure nor the store's, was
    # let out of the run, failing the whole batch once the claim was taken back. Then it was taken for a run stopped
    # short, and the module, whose work was done, ran a second time within the attempt (its side effects twice).
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    outage = threading.Event()
    _out_of_reach_while(outage, monkeypatch)
    looked = threading.Event()
    reachable = offboarding.tenant_transaction

    @contextlib.contextmanager
    def tenant_out_of_reach(tenant_id: uuid.UUID, **kwargs: Any) -> Iterator[Any]:
        if outage.is_set():
            looked.set()
            raise psycopg.OperationalError("the database is out of reach")
        with reachable(tenant_id, **kwargs) as conn:
            yield conn

    monkeypatch.setattr(offboarding, "tenant_transaction", tenant_out_of_reach)
    module = _EndsAfterTheGiveUp("large")
    item = _dispatched(app_pool, tenant, module.action)
    ran = asyncio.run_coroutine_threadsafe(worker.run_attempt(item, {module.action: module}), holder_process.loop)
    try:
        assert _until(lambda: module.runs == 1)
        outage.set()
        assert module.told.wait(BOUND_S)  # given up
        module.opened.set()
        assert looked.wait(BOUND_S)  # its output stored, and its tenant looked at, during the outage
    finally:
        outage.clear()
        module.opened.set()
    outcome = ran.result(BOUND_S)
    # Its store stopped short by the outage behind the give-up: only the store runs again under the claim taken back,
    # with the output of the one run, recorded once.
    assert outcome is not None and outcome.verdict["ok"] and is_blob_ref(outcome.verdict["output"])
    assert module.runs == 1 and records.count == 1
    assert payloads.load(outcome.verdict["output"], tenant) == {"run": 1, "pad": "x" * 70_000}
    row = _row(app_pool, item)
    assert row["state"] == "succeeded" and row["output"] == outcome.verdict["output"]


class _Large(Module[_NoParams]):
    """Returns at once an output too large to keep inline."""

    action: ClassVar[str] = "test.large_output"
    params_model = _NoParams

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        return {"pad": "x" * 70_000}


class _StoreAway:
    """An artifacts container whose every upload finds the store out of reach; counts the tries."""

    container_name = "artifacts"

    def __init__(self) -> None:
        self.tries = 0
        self._lock = threading.Lock()

    def upload_blob(self, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.tries += 1
        raise ServiceRequestError("connection refused")


def test_a_large_outputs_store_stops_once_the_claim_is_lost(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stored under an event of its own that nothing set, the output of a run whose attempt was cancelled went on
    # being retried for the store's whole window (90 s per storage call), holding the module thread and its
    # tenant's share for nobody.
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(artifact_write, "MAX_BACKOFF_S", 0.01)
    monkeypatch.setattr(artifact_write, "MAX_RETRY_WINDOW_S", BOUND_S / 4)
    store = _StoreAway()
    monkeypatch.setattr(payloads, "artifacts_container", lambda settings, **kwargs: store)
    returned = threading.Event()
    run_module = worker._run_module

    def observed_run(*args: Any, **kwargs: Any) -> Any:
        try:
            return run_module(*args, **kwargs)
        finally:
            returned.set()

    monkeypatch.setattr(worker, "_run_module", observed_run)
    module = _Large()
    item = _dispatched(app_pool, tenant, module.action)
    ran = asyncio.run_coroutine_threadsafe(worker.run_attempt(item, {module.action: module}), holder_process.loop)
    assert _until(lambda: store.tries >= 1)  # the store is being retried
    _cancel(app_pool, item)
    assert ran.result(BOUND_S) is None  # the claim found lost: nothing recorded here
    tries = store.tries
    assert returned.wait(BOUND_S)
    # At most a try already under way when the claim was found lost; before, a try every pause for the window.
    assert store.tries - tries <= 1, (tries, store.tries)
    assert _row(app_pool, item)["state"] == "abandoned"


class _LargeWhenOpened(Module[_NoParams]):
    """Waits until the test opens it, then returns an output too large to keep inline; counts its runs."""

    action: ClassVar[str] = "test.large_when_opened"
    params_model = _NoParams

    def __init__(self) -> None:
        self.runs = 0
        self.entered = threading.Event()
        self.opened = threading.Event()

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        self.runs += 1
        self.entered.set()
        self.opened.wait(BOUND_S)
        return {"run": self.runs, "pad": "x" * 70_000}


def _tenant_look_out_of_reach_while(outage: threading.Event, looked: threading.Event, monkeypatch: Any) -> None:
    """The look at the tenant after a large output's store (`kept_for_tenant`) fails while `outage` is set."""
    reachable = offboarding.tenant_transaction

    @contextlib.contextmanager
    def tenant_out_of_reach(tenant_id: uuid.UUID, **kwargs: Any) -> Iterator[Any]:
        if outage.is_set():
            looked.set()
            raise psycopg.OperationalError("the database is out of reach")
        with reachable(tenant_id, **kwargs) as conn:
            yield conn

    monkeypatch.setattr(offboarding, "tenant_transaction", tenant_out_of_reach)


class _Uploads:
    """The uploads of stored outputs made through the artifacts container, counted."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def counted(self) -> None:
        with self._lock:
            self.count += 1


class _CountingContainer:
    """An artifacts container that counts its uploads."""

    def __init__(self, container: Any, uploads: _Uploads) -> None:
        self._container = container
        self._uploads = uploads

    def upload_blob(self, *args: Any, **kwargs: Any) -> Any:
        self._uploads.counted()
        return self._container.upload_blob(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> _Uploads:
    observed = _Uploads()
    container = payloads.artifacts_container
    monkeypatch.setattr(
        payloads,
        "artifacts_container",
        lambda settings, **kwargs: _CountingContainer(container(settings, **kwargs), observed),
    )
    return observed


@pytest.mark.parametrize("outage_ends", ["before the give-up", "after the give-up"])
def test_a_large_output_whose_tenant_look_fails_before_any_give_up_is_stored_once_the_database_is_back(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    records: _Records,
    uploads: _Uploads,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
    outage_ends: str,
) -> None:
    # An outage that begins just after the upload: the look at the tenant fails within moments (a connect or pool
    # timeout), long before the holder gives up. That failure was the attempt's, and its record needed the database
    # the look had just failed to reach: the batch failed, was redelivered, and the module ran again. Now the output
    # is kept and only its store runs again, once a renewal is confirmed or the claim is taken back.
    monkeypatch.setattr(worker, "LEASE_S", 3.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    outage, looked = threading.Event(), threading.Event()
    _out_of_reach_while(outage, monkeypatch)
    _tenant_look_out_of_reach_while(outage, looked, monkeypatch)
    renewal_failed, take_back_asked = threading.Event(), threading.Event()
    renew, take_back = worker._still_held, worker._take_back

    def observed_renewal(item: WorkItem, key: AttemptKey, owner: str) -> bool:
        if outage.is_set() and looked.is_set():
            renewal_failed.set()
        return renew(item, key, owner)

    def observed_take_back(item: WorkItem, key: AttemptKey, owner: str, timeout_s: float) -> Any:
        take_back_asked.set()
        return take_back(item, key, owner, timeout_s)

    monkeypatch.setattr(worker, "_still_held", observed_renewal)
    monkeypatch.setattr(worker, "_take_back", observed_take_back)
    module = _LargeWhenOpened()
    item = _dispatched(app_pool, tenant, module.action)
    ran = asyncio.run_coroutine_threadsafe(worker.run_attempt(item, {module.action: module}), holder_process.loop)
    try:
        assert module.entered.wait(BOUND_S)
        outage.set()
        module.opened.set()
        assert looked.wait(BOUND_S)  # its output uploaded, and its tenant looked at, during the outage
        # The outage lasts until a renewal after the look failed (or the holder's giving up, and its taking back,
        # began), or until the holder tried to record a result.
        waited_for = renewal_failed if outage_ends == "before the give-up" else take_back_asked
        assert _until(lambda: waited_for.is_set() or records.count > 0)
    finally:
        outage.clear()
        module.opened.set()
    outcome = ran.result(BOUND_S)
    assert outcome is not None and outcome.verdict["ok"] and is_blob_ref(outcome.verdict["output"]), outcome
    assert module.runs == 1 and records.count == 1
    if outage_ends == "before the give-up":
        assert not take_back_asked.is_set()  # stored once a renewal was confirmed: no give-up, nothing taken back
    # Its blob written once: the store run again only looked at its tenant (an upload again met 409 and downloaded
    # the blob to compare, each time).
    assert uploads.count == 1
    assert payloads.load(outcome.verdict["output"], tenant) == {"run": 1, "pad": "x" * 70_000}
    row = _row(app_pool, item)
    assert row["state"] == "succeeded" and row["output"] == outcome.verdict["output"]


def _tenant_look_fails_with(error: psycopg.Error, looks: list[int], monkeypatch: Any) -> None:
    """The look at the tenant after a large output's store (`kept_for_tenant`) always fails with `error`; `looks`
    counts them (its one element)."""

    @contextlib.contextmanager
    def failing(tenant_id: uuid.UUID, **kwargs: Any) -> Iterator[Any]:
        looks[0] += 1
        raise error
        yield  # a generator, for the context manager

    monkeypatch.setattr(offboarding, "tenant_transaction", failing)


def test_a_large_output_whose_tenant_look_is_refused_records_the_refusal_at_once_and_runs_once(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    records: _Records,
    uploads: _Uploads,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An error the database answered that asking again does not clear kept the output, and its store (an upload
    # meeting 409, a download to compare, a pooled connection, a module thread) ran again at every confirmed renewal
    # until the deadline, which was then recorded as a timeout hiding the error.
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.1)
    looks = [0]
    _tenant_look_fails_with(
        psycopg.errors.InsufficientPrivilege("permission denied for table tenants"), looks, monkeypatch
    )
    module = _LargeWhenOpened()
    module.opened.set()
    item = _dispatched(app_pool, tenant, module.action, timeout_s=5)
    outcome = asyncio.run_coroutine_threadsafe(
        worker.run_attempt(item, {module.action: module}), holder_process.loop
    ).result(BOUND_S)
    assert outcome is not None and outcome.verdict["ok"] is False, outcome
    assert "InsufficientPrivilege: permission denied for table tenants" in outcome.verdict["error"], outcome
    assert "timed out" not in outcome.verdict["error"], outcome
    assert module.runs == 1 and records.count == 1 and looks[0] == 1 and uploads.count == 1
    row = _row(app_pool, item)
    assert row["state"] == "failed" and "InsufficientPrivilege" in row["error"], row


def test_a_large_output_kept_until_its_deadline_is_recorded_timed_out_with_its_error_its_blob_written_once(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    records: _Records,
    uploads: _Uploads,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The look at its tenant fails with the database out of reach until the attempt's deadline, renewals going
    # through: the output is kept and the look alone runs again at each confirmed renewal, never the module nor the
    # upload; at the deadline the attempt is recorded as timed out, naming the look's error.
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.1)
    looks = [0]
    _tenant_look_fails_with(psycopg.OperationalError("the database is out of reach"), looks, monkeypatch)
    module = _LargeWhenOpened()
    module.opened.set()
    item = _dispatched(app_pool, tenant, module.action, timeout_s=2)
    outcome = asyncio.run_coroutine_threadsafe(
        worker.run_attempt(item, {module.action: module}), holder_process.loop
    ).result(BOUND_S)
    assert outcome is not None and outcome.verdict["ok"] is False, outcome
    assert "timed out" in outcome.verdict["error"] and "out of reach" in outcome.verdict["error"], outcome
    assert looks[0] > 1  # looked at again while kept
    assert module.runs == 1 and records.count == 1 and uploads.count == 1
    row = _row(app_pool, item)
    assert row["state"] == "timed_out" and row["output"] is None, row


def test_a_host_stop_while_an_output_is_kept_lets_its_claim_go(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cancelled (the host stopping) while its output waited for its store, nothing running: the claim stayed set
    # (its run had started, so it was not "given up"), and the redelivered copy waited the lease and its grace out
    # before it ran the module again. The output kept is lost with the host (at least once, as ever).
    looks = [0]
    _tenant_look_fails_with(psycopg.OperationalError("the database is out of reach"), looks, monkeypatch)
    module = _LargeWhenOpened()
    module.opened.set()
    item = _dispatched(app_pool, tenant, module.action)

    async def store_ended() -> bool:
        # No run on the module threads left, as `_run_claimed` sees it: its output kept, waiting for a renewal.
        return not any(getattr(task.get_coro(), "__qualname__", "") == "run_in_share" for task in asyncio.all_tasks())

    ran = asyncio.run_coroutine_threadsafe(worker.run_attempt(item, {module.action: module}), holder_process.loop)
    assert _until(lambda: looks[0] == 1)
    assert _until(lambda: asyncio.run_coroutine_threadsafe(store_ended(), holder_process.loop).result(BOUND_S))
    holder = _row(app_pool, item)["claimed_by"]
    assert holder is not None
    ran.cancel()
    assert _until(lambda: _row(app_pool, item)["claimed_by"] is None), _row(app_pool, item)
    assert module.runs == 1 and looks[0] == 1 and records.count == 0
    assert _row(app_pool, item)["state"] == "dispatched"  # nothing recorded: its redelivery runs it


def test_a_stored_later_output_whose_renewal_fails_before_its_store_is_kept_and_its_module_runs_once(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    records: _Records,
    holder_process: _Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The store run again under the claim taken back after a give-up renews the claim first when it waited for its
    # thread (FRESH_CLAIM_S: none here, so it always does); that renewal's error was let out, failing the batch,
    # whose redelivery ran the module again though its output was kept.
    monkeypatch.setattr(worker, "LEASE_S", 1.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(worker, "HELD_POLL_S", 0.1)
    monkeypatch.setattr(worker, "FRESH_CLAIM_S", 0.0)
    outage, looked = threading.Event(), threading.Event()
    _out_of_reach_while(outage, monkeypatch)
    _tenant_look_out_of_reach_while(outage, looked, monkeypatch)
    on_store_thread = threading.local()
    failed_once = threading.Event()
    renew, run_module = worker._still_held, worker._run_module

    def observed_run(*args: Any) -> Any:
        on_store_thread.store = args[-1] is not None  # `done`: the output kept, only its store to run
        try:
            return run_module(*args)
        finally:
            on_store_thread.store = False

    def fails_once_before_the_store(item: WorkItem, key: AttemptKey, owner: str) -> bool:
        if getattr(on_store_thread, "store", False) and not failed_once.is_set():
            failed_once.set()
            raise psycopg.OperationalError("the database dropped out again")
        return renew(item, key, owner)

    monkeypatch.setattr(worker, "_run_module", observed_run)
    monkeypatch.setattr(worker, "_still_held", fails_once_before_the_store)
    module = _EndsAfterTheGiveUp("large")
    item = _dispatched(app_pool, tenant, module.action)
    ran = asyncio.run_coroutine_threadsafe(worker.run_attempt(item, {module.action: module}), holder_process.loop)
    try:
        assert _until(lambda: module.runs == 1)
        outage.set()
        assert module.told.wait(BOUND_S)  # given up
        module.opened.set()
        assert looked.wait(BOUND_S)  # its output stored, and its tenant looked at, during the outage
    finally:
        outage.clear()
        module.opened.set()
    outcome = ran.result(BOUND_S)
    assert failed_once.is_set()  # the store's renewal failed once
    assert outcome is not None and outcome.verdict["ok"] and is_blob_ref(outcome.verdict["output"]), outcome
    assert module.runs == 1 and records.count == 1
    assert payloads.load(outcome.verdict["output"], tenant) == {"run": 1, "pad": "x" * 70_000}
    assert _row(app_pool, item)["state"] == "succeeded"
