# intent_ref: platform.tenant-isolation
"""Timer passes go through the tenants one after another: a row of one tenant that a long transaction holds locked
fails that tenant's share of the pass (or is skipped), and the pass still does every other tenant's work and ends."""

from __future__ import annotations

import asyncio
import functools
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared import idempotency
from shared.db.session import bounded_lock_waits, tenant_transaction, tenant_write
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine import sweeper
from shared.engine.protocol import CANCEL_EVENT
from shared.engine.steps import AttemptKey
from shared.events import webhooks
from shared.idempotency_expiry import delete_expired_keys
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_execution_sweeper import (
    _BACKDATE_UPDATE,
    FakeDurable,
    Tenant,
    _get,
    _moved,
    _recorded,
    _status,
)
from tests.integration.test_webhooks import Receiver, emit, local, tenant  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration

BOUND_S = 60.0
"""How long a test waits for a pass to end: without a bound on its lock waits, it waits until the lock is released."""


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """`work` on a thread of its own (the test must be able to release the lock if it hangs); its result in "r"."""
    done: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.setdefault("r", work()), daemon=True)
    thread.start()
    return thread, done


def _lock_row(admin_url: str, statement: str, row_id: Any) -> psycopg.Connection[Any]:
    """An open transaction of another session (a long request, say) holding `row_id`'s row locked."""
    locker = psycopg.connect(admin_url, dbname="quantum")
    assert locker.execute(statement, (row_id,)).fetchone() is not None
    return locker


def test_only_bounded_lock_waits_set_a_lock_timeout_and_only_for_their_block(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant_id = new_tenant()
    with tenant_transaction(tenant_id, pool=app_pool) as conn:  # the request path's: the server's, unbounded
        assert conn.execute("SHOW lock_timeout").fetchone() == {"lock_timeout": "0"}
    with bounded_lock_waits(1500):
        with tenant_transaction(tenant_id, pool=app_pool) as conn:
            assert conn.execute("SHOW lock_timeout").fetchone() == {"lock_timeout": "1500ms"}
        with tenant_write(tenant_id, pool=app_pool) as conn:
            shown = conn.execute("SHOW lock_timeout")
        assert shown.fetchone() == {"lock_timeout": "1500ms"}
    with tenant_transaction(tenant_id, pool=app_pool) as conn:  # transaction-local: nothing left on the connection
        assert conn.execute("SHOW lock_timeout").fetchone() == {"lock_timeout": "0"}


async def _no_purge(*_: Any, **__: Any) -> int:
    return 0


def test_a_sweep_ends_the_other_tenants_executions_while_one_tenants_row_is_locked(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    pg: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The orchestrations recorded as outliving their erased tenant are other tests' (and this stand-in has no purge).
    monkeypatch.setattr(sweeper, "purge_erased_orchestrations", _no_purge)
    # Other tests' tenants with older candidates come first in the whole suite: within the run's 200 status calls and
    # 100 tenants, B was not always reached (its execution left running), whatever A's lock did.
    monkeypatch.setattr(sweeper, "MAX_STATUS_CHECKS", 100_000)
    monkeypatch.setattr(sweeper, "stuck_tenants", functools.partial(sweeper.stuck_tenants, 100_000))
    a, b = Tenant(api), Tenant(api)
    stalled_a, _ = _recorded(app_pool, a.id, a.intent)  # a stalled start: its tenant is swept first
    crashed_b = _moved(app_pool, b.id, b.intent, ["running"])  # its orchestration failed: the sweep must end it
    client = FakeDurable({crashed_b: _status("Failed", "boom")})
    locker = _lock_row(pg.admin_url, "SELECT 1 FROM app.executions WHERE id = %s FOR UPDATE", stalled_a)
    try:
        thread, done = _in_thread(lambda: asyncio.run(sweeper.sweep(client, pool=app_pool, control_pool=control_pool)))
        thread.join(BOUND_S)
        assert not thread.is_alive(), "the sweep waited on another tenant's locked row"
    finally:
        locker.rollback()
        locker.close()
        thread.join(BOUND_S)
    assert done["r"].failed_tenants >= 1  # A's: logged, left for the next run
    assert _get(app_pool, b.id, crashed_b).status == "failed"
    assert _get(app_pool, a.id, stalled_a).status == "pending"
    assert (
        str(stalled_a) not in client.started_ids()
    )  # A's claim rolled back with its failed transaction: the next run takes it over


def test_key_expiry_deletes_the_other_tenants_keys_while_one_tenants_key_is_held(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
) -> None:
    tenants = [api.provision(f"idem-lock-{uuid.uuid4().hex[:8]}").id for _ in range(3)]
    for age, tenant_id in zip(("3 days", "2 days", "2 days"), tenants, strict=True):
        with tenant_transaction(tenant_id, pool=app_pool) as conn:
            for key in ("k1", "k2"):
                conn.execute(
                    "INSERT INTO app.idempotency_keys (tenant_id, key, fingerprint, response_status, response_body,"
                    " expires_at) VALUES (app.current_tenant_id(), %s, 'fp', 201, '{}', now() - %s::interval)",
                    (key, age),
                )
    # Tenant 0's client re-sends an expired key: its request forgets the old key (a row lock held until the
    # request's transaction ends) and does its work.
    claimed, release = threading.Event(), threading.Event()

    def request() -> None:
        with tenant_transaction(tenants[0], pool=app_pool) as conn:
            assert idempotency.claim(conn, "k1", "fp2") is None
            claimed.set()
            release.wait(BOUND_S)

    held = threading.Thread(target=request, daemon=True)
    held.start()
    try:
        assert claimed.wait(BOUND_S)
        thread, done = _in_thread(lambda: delete_expired_keys(pool=app_pool, control_pool=control_pool))
        thread.join(BOUND_S)
        assert not thread.is_alive(), "the expiry waited on another tenant's locked key"
    finally:
        release.set()
        held.join(BOUND_S)
        thread.join(BOUND_S)
    # Tenant 0's held key was skipped, not waited for (its request has forgotten it since); its other went too.
    assert done["r"].failed_tenants == 0 and done["r"].tenant_keys >= 5
    for tenant_id in tenants:
        with tenant_transaction(tenant_id, pool=app_pool) as conn:
            assert conn.execute("SELECT key FROM app.idempotency_keys WHERE expires_at < now()").fetchall() == []


def test_a_webhook_run_sends_the_other_tenants_deliveries_and_ends_while_one_subscription_is_locked(
    api: ApiHarness,  # noqa: F811
    local: None,  # noqa: F811
    pg: Any,
) -> None:
    receiver_a, receiver_b = Receiver(), Receiver()
    a, headers_a = tenant(api, f"hooks-lock-{uuid.uuid4().hex[:8]}")
    b, headers_b = tenant(api, f"hooks-lock-{uuid.uuid4().hex[:8]}")
    sub_a = api.client.post("/api/v1/webhooks", json={"url": receiver_a.url, "event_types": ["*"]}, headers=headers_a)
    sub_b = api.client.post("/api/v1/webhooks", json={"url": receiver_b.url, "event_types": ["*"]}, headers=headers_b)
    assert sub_a.status_code == 201 and sub_b.status_code == 201
    emit(a.id, "test.a")
    sent_b = emit(b.id, "test.b")
    locker = _lock_row(
        pg.admin_url, "SELECT 1 FROM app.webhook_subscriptions WHERE id = %s FOR UPDATE", sub_a.json()["id"]
    )
    try:
        thread, done = _in_thread(lambda: webhooks.deliver_due(max_tenants=10_000))
        thread.join(BOUND_S)
        assert not thread.is_alive(), "the run waited on another tenant's locked subscription"
    finally:
        locker.rollback()
        locker.close()
        thread.join(BOUND_S)
    assert done["r"].delivered >= 1
    assert [event["id"] for event in receiver_b.events()] == sent_b
    # A's delivery reached its receiver but could not be recorded: it stays pending, sent again (at least once).
    with tenant_transaction(a.id) as conn:
        states = [row["state"] for row in conn.execute("SELECT state FROM app.webhook_deliveries").fetchall()]
    assert states == ["pending"]


def _swept_while_a_child_row_is_held(
    app_pool: ConnectionPool[Any], tenant: Tenant
) -> tuple[uuid.UUID, uuid.UUID, FakeDurable]:
    """A parent whose orchestration was terminated (the sweeper ends it) and its running child, swept once while the
    child's row is held past a timer's lock wait: that sweep fails the tenant (for now). Answers the parent, the
    child and the Durable client the sweeps use."""
    parent = _moved(app_pool, tenant.id, tenant.intent, ["running"], quiet=False)
    child, _ = _recorded(app_pool, tenant.id, tenant.child_intent, stale=False, parent=parent)
    with tenant_transaction(tenant.id, pool=app_pool) as conn:
        repo.transition(conn, child, "running")
        store.begin_attempt(conn, AttemptKey(parent, "pause", "run", 1), action="wait", remote=False)
        store.set_child(conn, parent, "pause", child)
        conn.execute(_BACKDATE_UPDATE, (parent,))
    client = FakeDurable({parent: _status("Terminated", "operator stop"), child: _status("Running")})
    held, release = threading.Event(), threading.Event()

    def hold_child_row() -> None:  # the child's own transaction on its row, longer than a timer's lock wait
        with tenant_transaction(tenant.id, pool=app_pool) as conn:
            conn.execute("SELECT 1 FROM app.executions WHERE id = %s FOR UPDATE", (child,))
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_child_row)
    holder.start()
    assert held.wait(30)
    try:
        with bounded_lock_waits(), pytest.raises(psycopg.errors.LockNotAvailable):  # as a sweep runs it
            asyncio.run(sweeper.sweep_tenant(tenant.id, client, pool=app_pool))  # fails this tenant, for now
    finally:
        release.set()
        holder.join(30)
    return parent, child, client


def test_a_parent_ended_by_the_sweeper_cancels_its_child_even_when_the_childs_row_is_held(
    api: ApiHarness, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    # The children's cancels were recorded after the parent's end had committed: one that waited past the lock bound
    # failed, and no later run passed it down (the parent being ended). Now both commit together, or neither.
    tenant = Tenant(api)
    parent, child, client = _swept_while_a_child_row_is_held(app_pool, tenant)
    asyncio.run(sweeper.sweep_tenant(tenant.id, client, pool=app_pool))
    assert _get(app_pool, tenant.id, parent).status == "failed"
    assert _get(app_pool, tenant.id, child).cancel_requested_at is not None
    assert [(instance, name) for instance, name, _ in client.raised] == [(str(child), CANCEL_EVENT)]
