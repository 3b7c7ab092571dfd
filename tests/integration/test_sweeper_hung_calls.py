# intent_ref: platform.execution
"""The sweeper's other Durable client calls on a hung task hub: a start, a terminate or an event raised that is never
answered is cut off by STATUS_CALL_BOUND_S as a status call is, so the run keeps within its budget (and goes on to the
other tenants), and what the call was doing is done by a later run, whether the task hub acted on it or not (ADR
0014). Real database; only the orchestration side is a stand-in, one that hangs until told to answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import remote, sweeper
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT, ORCHESTRATOR
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_erase_launch_race import _suspend, _tenant_with_intent
from tests.integration.test_erase_races import _erase
from tests.integration.test_execution_sweeper import (
    _BACKDATE_CLAIM,
    _BACKDATE_UPDATE,
    AUTHOR,
    FakeDurable,
    Tenant,
    _get,
    _moved,
    _recorded,
    _status,
)
from tests.integration.test_offboarding import _tenant_row_counts
from tests.integration.test_sweeper_relaunch_erased import _ErasedBeforeStart
from tests.integration.test_sweeper_stuck_compensation import Durable, Run, _execution_now, _stuck

pytestmark = pytest.mark.integration

HUNG_S = 3600.0
"""Longer than any test: a call that hangs is one the task hub never answers."""
BOUND_S = 0.3
BUDGET_S = 2.0
GUARD_S = 20.0
"""How long a run may take before the test gives it up: a run held by a hung call fails the test, not the suite."""


class HungStarts(FakeDurable):
    """A task hub whose starts are never answered while `hangs`; `landed`: it starts the orchestration all the same."""

    def __init__(self, *, landed: bool) -> None:
        super().__init__()
        self.landed = landed
        self.hangs = True
        self.tried: list[str] = []

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        assert instance_id is not None
        if not self.hangs:
            return await super().start_new(orchestration_function_name, instance_id, client_input)
        self.tried.append(instance_id)
        if self.landed:
            self.statuses[instance_id] = _status("Pending")
        await asyncio.sleep(HUNG_S)
        return instance_id


class ErasedThenHung(_ErasedBeforeStart):
    """The erasure's orchestration side, on which the tenant is erased as a start is asked for, and which then starts
    the orchestration and never answers."""

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        await super().start_new(orchestration_function_name, instance_id, client_input)
        await asyncio.sleep(HUNG_S)
        raise AssertionError("cut off before")


class HungTerminates(Durable):
    """A task hub whose terminates are never answered while `hangs`; `landed`: it terminates all the same."""

    def __init__(self, run: Run, *, landed: bool) -> None:
        super().__init__(run)
        self.landed = landed
        self.hangs = True
        self.tried: list[str] = []

    async def terminate(self, instance_id: str, reason: str) -> None:
        if not self.hangs:
            await super().terminate(instance_id, reason)
            return
        self.tried.append(instance_id)
        if self.landed:
            self.terminated.append((instance_id, reason))
        await asyncio.sleep(HUNG_S)


class HungRaises(FakeDurable):
    """A task hub whose event raises are never answered while `hangs`."""

    def __init__(self, statuses: dict[uuid.UUID, Any]) -> None:
        super().__init__(statuses)
        self.hangs = True
        self.tried: list[str] = []

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        if not self.hangs:
            await super().raise_event(instance_id, event_name, event_data)
            return
        self.tried.append(instance_id)
        await asyncio.sleep(HUNG_S)


async def _nothing(*_: Any, **__: Any) -> int:
    return 0


def _erased_orchestrations(api: ApiHarness) -> list[uuid.UUID]:
    """The orchestrations recorded as outliving their erased tenant (control.erased_tenant_orchestrations)."""
    with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_platform")
        return [row[0] for row in conn.execute("SELECT instance_id FROM control.erased_tenant_orchestrations")]


@pytest.fixture(autouse=True)
def forget_erased_orchestrations(api: ApiHarness) -> Iterator[None]:
    """The records a test leaves (a start cut off is due 300 s later) are deleted after it: left, a later test's run
    of the sweeper in this database purged them on its own stand-in (which may have no purge), changing what it did."""
    before = _erased_orchestrations(api)
    yield
    with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_platform")
        conn.execute(
            "DELETE FROM control.erased_tenant_orchestrations WHERE NOT (instance_id = ANY(%s::uuid[]))", (before,)
        )


def _bounded_run(
    monkeypatch: pytest.MonkeyPatch,
    tenants: list[uuid.UUID],
    quiet_s: float | None = None,
    *,
    purge_erased: bool = False,
) -> None:
    """Runs of these tenants only (the database's other tenants and raise steps are other tests'), the run's budget
    and its calls' bound short; `quiet_s` for the tenants' sweeps when given. The purge of orchestrations recorded as
    outliving their erased tenant runs only when `purge_erased`: the records due are other tests' too, and a stand-in
    of these tests may have no purge."""
    monkeypatch.setattr(sweeper, "stuck_tenants", lambda **_: tenants)
    monkeypatch.setattr(sweeper, "expire_work_leases", _nothing)
    monkeypatch.setattr(sweeper, "raise_verdicts_again", _nothing)
    if not purge_erased:
        monkeypatch.setattr(sweeper, "purge_erased_orchestrations", _nothing)
    monkeypatch.setattr(sweeper, "RUN_BUDGET_S", BUDGET_S)
    monkeypatch.setattr(sweeper, "STATUS_CALL_BOUND_S", BOUND_S)
    if quiet_s is not None:
        monkeypatch.setattr(sweeper, "sweep_tenant", partial(sweeper.sweep_tenant, quiet_s=quiet_s))


def _sweep(client: Any, pool: ConnectionPool[Any]) -> tuple[sweeper.SweepResult, float]:
    """One run, given up after GUARD_S; answers what it did and how long it took."""
    began = time.monotonic()
    result = asyncio.run(asyncio.wait_for(sweeper.sweep(client, pool=pool), GUARD_S))
    return result, time.monotonic() - began


@pytest.mark.parametrize("landed", [False, True], ids=["not-started", "started-unanswered"])
def test_a_hung_start_is_cut_off_and_the_stalled_start_taken_over_by_a_later_run(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    # Bounded only by the client's 240 s, a hung start held up the run, and every tenant's sweep behind it, 4 minutes.
    a, b = Tenant(api), Tenant(api)
    stalled, expected_input = _recorded(app_pool, a.id, a.intent)
    dead = _moved(app_pool, b.id, b.intent, ["running", "waiting"])
    client = HungStarts(landed=landed)
    client.statuses[str(dead)] = _status("Failed", "boom")
    _bounded_run(monkeypatch, [a.id, b.id])

    result, took = _sweep(client, app_pool)

    assert took < BUDGET_S and client.tried == [str(stalled)] and client.started == []
    assert _get(app_pool, a.id, stalled).status == "pending"  # left pending and claimed, as a failed start is
    # The run went on to the next tenant.
    assert result.ended == 1 and _get(app_pool, b.id, dead).status == "failed"

    # Its claim stale, a later run asks first: started by the cut-off call, it is left to record its own start;
    # not started, it is started now.
    with tenant_transaction(a.id, pool=app_pool) as conn:
        conn.execute(_BACKDATE_CLAIM, (stalled,))
    client.hangs = False
    again, _ = _sweep(client, app_pool)

    assert str(stalled) in client.asked
    assert client.started == ([] if landed else [(ORCHESTRATOR, str(stalled), expected_input)])
    assert again.started == (0 if landed else 1) and client.tried == [str(stalled)]
    assert _get(app_pool, a.id, stalled).status == "pending"


def test_a_hung_start_whose_tenant_was_erased_meanwhile_leaves_no_orchestration(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start cut off may have started: looked at for an erased tenant as an answered start is, its orchestration,
    its history holding the tenant's input, does not outlive the tenant (no later run finds it, its rows gone)."""
    client: Any = ErasedThenHung()  # the erasure's stand-in: the calls a stalled start makes, no more
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    monkeypatch.setattr(sweeper, "STATUS_CALL_BOUND_S", BOUND_S)
    try:
        tenant, intent_id = _tenant_with_intent(api, f"erased-hung-{uuid.uuid4().hex[:6]}")
        stalled, _ = _recorded(app_pool, tenant.id, intent_id)

        def erase() -> None:
            _suspend(api, tenant)
            erased = _erase(api, tenant)
            assert erased.status_code == 200, erased.text

        client.before_start = erase
        result = asyncio.run(asyncio.wait_for(sweeper.sweep_tenant(tenant.id, client, pool=app_pool), GUARD_S))
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]

    assert client.before_start is None and result.started == 0
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 0
    assert client.instances == {} and client.purged == [str(stalled)]


def test_a_run_of_hung_starts_ends_at_its_budget(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each start cut off by its bound, the run begins none once its budget has passed."""
    a = Tenant(api)
    stalled = [_recorded(app_pool, a.id, a.intent)[0] for _ in range(6)]
    client = HungStarts(landed=False)
    _bounded_run(monkeypatch, [a.id])
    monkeypatch.setattr(sweeper, "RUN_BUDGET_S", 2.5 * BOUND_S)

    result, took = _sweep(client, app_pool)

    assert 1 <= len(client.tried) < len(stalled) and result.started == 0
    assert took < 2.5 * BOUND_S + 2 * BOUND_S + 1.0
    assert {_get(app_pool, a.id, execution_id).status for execution_id in stalled} == {"pending"}


@pytest.mark.parametrize(
    ("landed", "cancelled"),
    [(False, False), (True, False), (True, True)],
    ids=["not-terminated", "terminated-unanswered", "cancelled-terminated-unanswered"],
)
def test_a_hung_terminate_is_cut_off_and_the_stuck_run_ended_by_a_later_run(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    new_tenant: Any,
    monkeypatch: pytest.MonkeyPatch,
    landed: bool,
    cancelled: bool,
) -> None:
    tenant = new_tenant()
    run, execution_id = _stuck(app_pool, tenant, rules=7, cancelled=cancelled)
    client = HungTerminates(run, landed=landed)
    _bounded_run(monkeypatch, [tenant], quiet_s=0.0)

    result, took = _sweep(client, app_pool)

    assert took < BUDGET_S and client.tried == [str(execution_id)] and result.ended == 0
    assert _execution_now(app_pool, tenant, execution_id).status == "compensating"  # as it was

    # Terminated after all, the next run finds its orchestration so and ends it (cancelled still when a cancel
    # stopped its run); not terminated, it is terminated now. Either way once.
    client.hangs = False
    again, _ = _sweep(client, app_pool)

    ended = _execution_now(app_pool, tenant, execution_id)
    assert again.ended == 1 and [instance for instance, _ in client.terminated] == [str(execution_id)]
    assert client.tried == [str(execution_id)]
    assert ended.status == ("cancelled" if cancelled else "failed")
    assert ended.error is not None and "its compensation then stalled" in ended.error


def test_a_hung_cancel_to_a_child_is_cut_off_and_raised_by_a_later_run(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper ends a parent whose orchestration was terminated and tells its running child to cancel; that
    raise hung the run as a start or a terminate did."""
    e = Tenant(api)
    parent = _moved(app_pool, e.id, e.intent, ["running"], quiet=False)
    child, _ = _recorded(app_pool, e.id, e.child_intent, stale=False, parent=parent)
    with tenant_transaction(e.id, pool=app_pool) as conn:
        repo.transition(conn, child, "running")
        store.begin_attempt(conn, AttemptKey(parent, "pause", "run", 1), action="wait", remote=False)
        store.set_child(conn, parent, "pause", child)
        conn.execute(_BACKDATE_UPDATE, (parent,))
    client = HungRaises({parent: _status("Terminated", "operator stop"), child: _status("Running")})
    _bounded_run(monkeypatch, [e.id])

    result, took = _sweep(client, app_pool)

    assert took < BUDGET_S and client.tried == [str(child)] and result.ended == 1
    assert _get(app_pool, e.id, parent).status == "failed"
    with tenant_transaction(e.id, pool=app_pool) as conn:
        assert not store.cancel_handed_over(conn, child)  # recorded, not told
    assert _get(app_pool, e.id, child).cancel_requested_at is not None

    # Quiet, the child is asked after, and its cancel raised again.
    with tenant_transaction(e.id, pool=app_pool) as conn:
        conn.execute(_BACKDATE_UPDATE, (child,))
    client.hangs = False
    _sweep(client, app_pool)

    assert client.raised == [(str(child), CANCEL_EVENT, {"by": f"execution:{parent}"})]
    with tenant_transaction(e.id, pool=app_pool) as conn:
        assert store.cancel_handed_over(conn, child)


def test_the_cancels_of_many_children_are_told_at_once_within_one_bound(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ended parent's children are told of its cancel all at once: one after another, each cut off by its own
    bound, a parent of many children held the run that many bounds (12 children: 4 s of a 2 s budget; up to 200 steps,
    ~1000 s on a hung task hub). Those not told stay recorded, and a later run raises them."""
    e = Tenant(api)
    steps = [{"id": f"pause-{index}", "action": "wait", "seconds": 1} for index in range(12)]
    body = {"name": f"sweep-{uuid.uuid4().hex[:10]}", "definition": {"target": "staging", "steps": steps}}
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(e.name, AUTHOR))
    assert created.status_code == 201, created.text
    parent = _moved(app_pool, e.id, uuid.UUID(created.json()["id"]), ["running"], quiet=False)
    children = []
    for index in range(len(steps)):
        child, _ = _recorded(app_pool, e.id, e.child_intent, stale=False, parent=parent)
        with tenant_transaction(e.id, pool=app_pool) as conn:
            repo.transition(conn, child, "running")
            store.begin_attempt(conn, AttemptKey(parent, f"pause-{index}", "run", 1), action="wait", remote=False)
            store.set_child(conn, parent, f"pause-{index}", child)
        children.append(child)
    with tenant_transaction(e.id, pool=app_pool) as conn:
        conn.execute(_BACKDATE_UPDATE, (parent,))
    statuses = {parent: _status("Terminated", "operator stop")} | {child: _status("Running") for child in children}
    client = HungRaises(statuses)
    _bounded_run(monkeypatch, [e.id])

    result, took = _sweep(client, app_pool)

    assert took < BUDGET_S and sorted(client.tried) == sorted(map(str, children)) and result.ended == 1
    assert _get(app_pool, e.id, parent).status == "failed"
    with tenant_transaction(e.id, pool=app_pool) as conn:
        assert not any(store.cancel_handed_over(conn, child) for child in children)  # recorded, not told
    assert all(_get(app_pool, e.id, child).cancel_requested_at is not None for child in children)

    # Quiet, each child is asked after, and its cancel raised again.
    with tenant_transaction(e.id, pool=app_pool) as conn:
        for child in children:
            conn.execute(_BACKDATE_UPDATE, (child,))
    client.hangs = False
    _sweep(client, app_pool)

    assert sorted(client.raised) == sorted((str(c), CANCEL_EVENT, {"by": f"execution:{parent}"}) for c in children)
    with tenant_transaction(e.id, pool=app_pool) as conn:
        assert all(store.cancel_handed_over(conn, child) for child in children)


class HungVerdicts(FakeDurable):
    """A task hub that takes a child's cancel at once and never answers the raise of a verdict."""

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        if event_name != CANCEL_EVENT:
            await asyncio.sleep(HUNG_S)
        await super().raise_event(instance_id, event_name, event_data)


def _ended_work(child: uuid.UUID, count: int) -> list[store.Attempt]:
    """What a child's cancel ended: `count` attempts whose verdicts are to be handed over."""
    now = datetime.now(UTC)
    return [
        store.Attempt(
            AttemptKey(child, f"work-{index}", "run", 1),
            "http",
            True,
            "failed",
            None,
            "cancelled",
            False,
            None,
            None,
            None,
            now,
            now,
        )
        for index in range(count)
    ]


def _raises_left() -> list[asyncio.Task[Any]]:
    """The verdict raises of a hand-over still under way."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == remote._raised.__qualname__
    ]


def test_the_verdict_raises_of_children_cut_off_by_their_bound_do_not_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cut off at the children's bound, each tell was cancelled while its hand-over of verdicts waited for its raises:
    # the raises, each an HTTP call the task hub held, ran on after the run had moved on, for as long as it held them.
    children = {uuid.uuid4(): _ended_work(uuid.uuid4(), 8) for _ in range(3)}
    client = HungVerdicts()
    monkeypatch.setattr(sweeper, "_children_bound_s", lambda: BOUND_S)  # within the hand-over's own bound
    monkeypatch.setattr(sweeper, "STATUS_CALL_BOUND_S", BOUND_S)

    async def told() -> tuple[list[asyncio.Task[Any]], float]:
        began = time.monotonic()
        await sweeper._tell_children(client, uuid.uuid4(), uuid.uuid4(), children, None)
        return _raises_left(), time.monotonic() - began

    left, took = asyncio.run(asyncio.wait_for(told(), GUARD_S))

    assert sorted(instance for instance, _, _ in client.raised) == sorted(map(str, children))  # the cancels told
    assert left == [] and took < BOUND_S + 2 * remote.CANCEL_GRACE_S
