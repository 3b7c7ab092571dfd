# intent_ref: platform.execution
"""The tenant work queue at the SQL level (ADR 0027): RLS alone keeps tenants' items apart, a racing lease hands an
item out once, an expired lease ends its attempt as retryable, a cancel ends what no worker holds."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine import work_queue
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.test_executions import _execution

# The lease seals task tokens, which reads the settings: without the fixture the module passed only after another
# module had left them cached.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]
ACTION = "build-container"


@pytest.fixture
def tenants(new_tenant: Callable[[], uuid.UUID]) -> dict[str, uuid.UUID]:
    return {name: new_tenant() for name in ("queue-a", "queue-b")}


def queued(pool: ConnectionPool[Any], tenant_id: uuid.UUID, *, action: str = ACTION) -> AttemptKey:
    """A running execution whose one remote step's first attempt is queued."""
    execution = _execution(pool, tenant_id, path=["running"])
    key = AttemptKey(execution.id, "build", "run", 1)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", action, 3)])
        store.begin_attempt(conn, key, action=action, remote=True, step_state="waiting")
        work_queue.enqueue(conn, key, action=action, params={"image": f"secret-{tenant_id}"}, timeout_s=600)
    return key


def lease_all(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, *, action: str = ACTION, lease_s: float = 60
) -> list[Any]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return work_queue.lease(conn, tenant_id, actions=[action], max_items=50, lease_s=lease_s, worker="w").leases


def test_rls_alone_keeps_another_tenants_items_out_of_reach(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    a, b = tenants["queue-a"], tenants["queue-b"]
    action = f"only-a-{uuid.uuid4().hex[:6]}"
    key = queued(app_pool, a, action=action)
    with tenant_transaction(a, pool=app_pool) as conn:
        (item_id,) = [
            row["id"]
            for row in conn.execute("SELECT id FROM app.work_items WHERE execution_id = %s", (key.execution_id,))
        ]
    with tenant_transaction(b, pool=app_pool) as conn:
        # No tenant condition in any of these statements: the database's policies are the only barrier.
        assert conn.execute("SELECT count(*) AS n FROM app.work_items WHERE id = %s", (item_id,)).fetchone()["n"] == 0
        stolen = conn.execute(
            "UPDATE app.work_items SET lease_id = gen_random_uuid(), leased_by = 'thief',"
            " lease_expires_at = clock_timestamp() + interval '1 hour' WHERE id = %s",
            (item_id,),
        )
        assert stolen.rowcount == 0
        assert work_queue.lease(conn, b, actions=[action], max_items=50, lease_s=60, worker="thief").leases == []
        with pytest.raises(work_queue.WorkItemNotFoundError):
            work_queue.heartbeat(conn, item_id, uuid.uuid4(), extend_s=60, progress=None)
        assert work_queue.list_items(conn, execution_id=key.execution_id)[0] == []
        # B neither registered nor queued anything of this action: its poll records no row (migration 0045).
        assert (
            conn.execute("SELECT count(*) AS n FROM app.work_pollers WHERE action = %s", (action,)).fetchone()["n"] == 0
        )
    # Tenant A's own worker still finds it untouched.
    (lease,) = lease_all(app_pool, a, action=action)
    assert lease.item.id == item_id and lease.item.leased_by == "w"
    assert lease.item.params == {"image": f"secret-{a}"}


def test_racing_leases_hand_an_item_out_once(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    a = tenants["queue-a"]
    action = f"race-{uuid.uuid4().hex[:6]}"
    keys = {queued(app_pool, a, action=action) for _ in range(3)}
    got: list[AttemptKey] = []
    start = threading.Barrier(6)

    def racer() -> None:
        start.wait()
        got.extend(lease.item.key for lease in lease_all(app_pool, a, action=action))

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got, key=str) == sorted(keys, key=str)  # each exactly once, none lost


def test_an_expired_lease_ends_its_attempt_as_retryable_once(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    a = tenants["queue-a"]
    action = f"expire-{uuid.uuid4().hex[:6]}"
    key = queued(app_pool, a, action=action)
    (lease,) = lease_all(app_pool, a, action=action, lease_s=0.5)
    with tenant_transaction(a, pool=app_pool) as conn:
        assert all(x.key != key for x in work_queue.expire_leases(conn))  # its lease still holds
    time.sleep(1.0)
    with tenant_transaction(a, pool=app_pool) as conn:
        assert not work_queue.lease_is_live(conn, key, str(lease.item.lease_id))
        ended = [attempt for attempt in work_queue.expire_leases(conn) if attempt.key == key]
    assert [(x.state, x.retryable) for x in ended] == [("timed_out", True)]
    assert ended[0].verdict()["ok"] is False and "lease expired" in ended[0].verdict()["error"]
    with tenant_transaction(a, pool=app_pool) as conn:
        assert all(x.key != key for x in work_queue.expire_leases(conn))  # once
        with pytest.raises(work_queue.LeaseNotHeldError):
            work_queue.heartbeat(conn, lease.item.id, lease.item.lease_id, extend_s=60, progress=None)
    assert lease_all(app_pool, a, action=action) == []  # the same attempt is never leased again


def test_a_cancel_ends_queued_items_and_leaves_leased_ones_to_their_heartbeat(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    a = tenants["queue-a"]
    action = f"cancel-{uuid.uuid4().hex[:6]}"
    held = queued(app_pool, a, action=action)
    (lease,) = lease_all(app_pool, a, action=action)
    key = queued(app_pool, a, action=action)
    with tenant_transaction(a, pool=app_pool) as conn:
        for execution_id in (held.execution_id, key.execution_id):
            conn.execute(
                "UPDATE app.executions SET cancel_requested_at = clock_timestamp() WHERE id = %s", (execution_id,)
            )
        assert work_queue.cancel_queued(conn, held.execution_id) == []  # leased: left to its heartbeat
        ended = work_queue.cancel_queued(conn, key.execution_id)
        assert [(x.key, x.state) for x in ended] == [(key, "abandoned")]
        assert store.list_steps(conn, key.execution_id)[0]["state"] == "cancelled"
    assert lease_all(app_pool, a, action=action) == []
    with tenant_transaction(a, pool=app_pool) as conn:
        beat = work_queue.heartbeat(conn, lease.item.id, lease.item.lease_id, extend_s=60, progress=None)
        assert beat.cancelled is not None and beat.cancelled.state == "abandoned" and beat.lease_expires_at is None
        assert store.list_steps(conn, held.execution_id)[0]["state"] == "cancelled"
