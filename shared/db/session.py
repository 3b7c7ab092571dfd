# intent_ref: platform.tenant-isolation
"""Transactions in which row-level security sees exactly one tenant, or none."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg_pool import ConnectionPool

from shared.db.pool import get_control_pool, get_pool
from shared.db.roles import PLATFORM_ROLE, RUNTIME_ROLE

_SET_RUNTIME_ROLE = sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(RUNTIME_ROLE))
_SET_PLATFORM_ROLE = sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(PLATFORM_ROLE))
_PIN_TENANT = "SELECT app.pin_tenant(%s)"

Prologue = Callable[[psycopg.Connection[Any]], None]


def enter_tenant(conn: psycopg.Connection[Any], tenant_id: UUID) -> None:
    """Inside an open transaction: run as the runtime role with `tenant_id` pinned (what tenant_transaction does)."""
    if not isinstance(tenant_id, UUID):
        raise TypeError("tenant_id must be a UUID")
    # SET LOCAL ROLE: whatever the login, the statements run as the non-owner runtime role.
    conn.execute(_SET_RUNTIME_ROLE)
    # The pin lives for this transaction only and cannot be changed within it (migration 0008).
    conn.execute(_PIN_TENANT, (tenant_id,))


def _clean_session(conn: psycopg.Connection[Any]) -> None:
    # Insurance against a plain SET (or SET ROLE) left by an earlier borrower. It runs at the start of every
    # transaction, in the same round trip as BEGIN, instead of as a separate round trip on every return to
    # the pool; if the transaction rolls back, so does this reset, and the next transaction resets again.
    conn.execute("RESET ALL")
    conn.execute("RESET ROLE")


def _tenant_prologue(tenant_id: UUID) -> Prologue:
    if not isinstance(tenant_id, UUID):  # checked before borrowing a connection
        raise TypeError("tenant_id must be a UUID")
    return lambda conn: enter_tenant(conn, tenant_id)


def _set_role(statement: sql.Composed) -> Prologue:
    def prologue(conn: psycopg.Connection[Any]) -> None:
        conn.execute(statement)

    return prologue


@contextmanager
def _transaction(pool: ConnectionPool[Any], prologue: Prologue) -> Iterator[psycopg.Connection[DictRow]]:
    """Borrow a connection, open a transaction and run its prologue, all in one round trip to the server."""
    with pool.connection() as conn, ExitStack() as stack:
        # The pipeline ends before the caller's statements: they run (and fail) one by one as usual. An error in
        # the prologue surfaces when the pipeline syncs, inside the transaction, which then rolls back.
        with conn.pipeline():
            stack.enter_context(psycopg.Transaction(conn))  # conn.transaction() would keep the pipeline open
            _clean_session(conn)
            prologue(conn)
        yield conn


@contextmanager
def tenant_write(tenant_id: UUID, *, pool: ConnectionPool[Any] | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """A tenant transaction whose statements and COMMIT travel in one round trip (for writes read back after it).

    Cursors' results can be read once the block has ended, when the COMMIT has been acknowledged. A server error
    surfaces at the end of the block, and the pool's connection context rolls the failed transaction back (the
    COMMIT queued behind the failed statement was skipped).
    """
    prologue = _tenant_prologue(tenant_id)
    # psycopg.Transaction, not conn.transaction(): in a pipeline the latter syncs around the block (two more round
    # trips); here the pipeline's one sync at its end covers BEGIN, the statements and COMMIT.
    with (pool or get_pool()).connection() as conn, conn.pipeline(), psycopg.Transaction(conn):
        _clean_session(conn)
        prologue(conn)
        yield conn


@contextmanager
def tenant_transaction(
    tenant_id: UUID, *, pool: ConnectionPool[Any] | None = None
) -> Iterator[psycopg.Connection[DictRow]]:
    """Open one transaction, as the runtime role, in which RLS sees only `tenant_id`'s rows."""
    prologue = _tenant_prologue(tenant_id)
    with _transaction(pool or get_pool(), prologue) as conn:
        yield conn


@contextmanager
def runtime_transaction(*, pool: ConnectionPool[Any] | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """Open one transaction as the runtime role with no tenant: tenant tables show zero rows."""
    with _transaction(pool or get_pool(), _set_role(_SET_RUNTIME_ROLE)) as conn:
        yield conn


@contextmanager
def platform_transaction(*, pool: ConnectionPool[Any] | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """Open one transaction as the control-plane role: every tenant row, and no tenant's data."""
    # The control plane's own pool: its login is the only one that may become qp_platform (ADR 0018).
    with _transaction(pool or get_control_pool(), _set_role(_SET_PLATFORM_ROLE)) as conn:
        yield conn
