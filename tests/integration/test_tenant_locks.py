# intent_ref: platform.tenant-isolation
"""Per-tenant locks (the start's quota lock, the outbox relay's) that no other tenant's SQL can take or hold."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db import tenant_locks
from shared.db.session import allow_nested_borrow, tenant_transaction

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tenants(pg) -> dict[str, uuid.UUID]:  # type: ignore[no-untyped-def]
    ids = {"victim": uuid.uuid4(), "other": uuid.uuid4()}
    with psycopg.connect(pg.control_url, autocommit=True) as control:
        for key, tenant_id in ids.items():
            with control.transaction():
                control.execute("SET LOCAL ROLE qp_platform")
                control.execute(
                    "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
                    (tenant_id, f"locks-{key}-{tenant_id.hex[:6]}", uuid.uuid4()),
                )
    return ids


def _start_lock(conn: psycopg.Connection[Any]) -> None:
    tenant_locks.hold(conn, "executions")


def _lock_waits(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, take: Callable[[psycopg.Connection[Any]], object]
) -> bool:
    """Whether `take`, in a transaction of `tenant_id`, has to wait (given up after 300 ms)."""
    try:
        # Beside a transaction the test holds open on purpose: a second connection of the same pool.
        with allow_nested_borrow(), tenant_transaction(tenant_id, pool=pool) as conn:
            conn.execute("SET LOCAL lock_timeout = '300ms'")
            take(conn)
    except psycopg.errors.LockNotAvailable:
        return True
    return False


def test_a_start_lock_serialises_its_own_tenant_only(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    with tenant_transaction(tenants["victim"], pool=app_pool) as holder:
        _start_lock(holder)
        # A second start of the same tenant waits for the first; another tenant's does not.
        assert _lock_waits(app_pool, tenants["victim"], _start_lock)
        assert not _lock_waits(app_pool, tenants["other"], _start_lock)
    assert not _lock_waits(app_pool, tenants["victim"], _start_lock)  # released with its transaction


def test_no_sql_can_hold_another_tenants_start_lock(
    pg: Any, app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    victim = tenants["victim"]
    with psycopg.connect(pg.app_url, autocommit=True) as attacker:
        # The former key, taken at session level: it outlived its transaction on the pooled connection and stalled
        # the victim's starts. It names nothing the start takes now.
        attacker.execute("SELECT pg_advisory_lock(hashtextextended('executions:' || %s::text, 0))", (victim,))
        assert not _lock_waits(app_pool, victim, _start_lock)
        # In another tenant's transaction the victim's lock row is neither visible nor insertable nor lockable.
        with tenant_transaction(tenants["other"], pool=app_pool) as conn:
            _start_lock(conn)
            assert {row["tenant_id"] for row in conn.execute("SELECT tenant_id FROM app.tenant_locks")} == {
                tenants["other"]
            }
            assert (
                conn.execute("SELECT 1 FROM app.tenant_locks WHERE tenant_id = %s FOR UPDATE", (victim,)).fetchall()
                == []
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with tenant_transaction(tenants["other"], pool=app_pool) as conn:
                conn.execute("INSERT INTO app.tenant_locks (tenant_id, purpose) VALUES (%s, 'executions')", (victim,))


def test_one_relay_per_tenant_at_a_time(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    def takes(tenant_id: uuid.UUID) -> bool:
        with allow_nested_borrow(), tenant_transaction(tenant_id, pool=app_pool) as conn:
            conn.execute("SET LOCAL lock_timeout = '300ms'")  # a wait fails the test instead of hanging it
            return tenant_locks.try_hold(conn, "outbox-relay")

    # Each tenant's first relay makes its lock row (a second relay waits for that insert to commit, once).
    assert takes(tenants["victim"]) and takes(tenants["other"])
    with tenant_transaction(tenants["victim"], pool=app_pool) as holder:
        assert tenant_locks.try_hold(holder, "outbox-relay")
        assert not takes(tenants["victim"])  # skipped, not waited for
        assert takes(tenants["other"])
    assert takes(tenants["victim"])
