# intent_ref: platform.tenant-isolation
"""Transactions in which row-level security sees exactly one tenant, or none."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg_pool import ConnectionPool

from shared.db.pool import get_pool
from shared.db.roles import PLATFORM_ROLE, RUNTIME_ROLE

_SET_RUNTIME_ROLE = sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(RUNTIME_ROLE))
_SET_PLATFORM_ROLE = sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(PLATFORM_ROLE))


def enter_tenant(conn: psycopg.Connection[Any], tenant_id: UUID) -> None:
    """Inside an open transaction: run as the runtime role with `tenant_id` pinned (what tenant_transaction does)."""
    if not isinstance(tenant_id, UUID):
        raise TypeError("tenant_id must be a UUID")
    # SET LOCAL ROLE: whatever the login, the statements run as the non-owner runtime role.
    conn.execute(_SET_RUNTIME_ROLE)
    # The pin lives for this transaction only and cannot be changed within it (migration 0008).
    conn.execute("SELECT app.pin_tenant(%s)", (tenant_id,))


@contextmanager
def tenant_transaction(
    tenant_id: UUID, *, pool: ConnectionPool[Any] | None = None
) -> Iterator[psycopg.Connection[DictRow]]:
    """Open one transaction, as the runtime role, in which RLS sees only `tenant_id`'s rows."""
    with (pool or get_pool()).connection() as conn, conn.transaction():
        enter_tenant(conn, tenant_id)
        yield conn


@contextmanager
def runtime_transaction(*, pool: ConnectionPool[Any] | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """Open one transaction as the runtime role with no tenant: tenant tables show zero rows."""
    with (pool or get_pool()).connection() as conn, conn.transaction():
        conn.execute(_SET_RUNTIME_ROLE)
        yield conn


@contextmanager
def platform_transaction(*, pool: ConnectionPool[Any] | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """Open one transaction as the control-plane role: every tenant row, and no tenant's data."""
    with (pool or get_pool()).connection() as conn, conn.transaction():
        conn.execute(_SET_PLATFORM_ROLE)
        yield conn
