# intent_ref: platform.audit
"""The Postgres audit store: append-only rows under row-level security, keyset-paginated."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.audit.model import (
    AuditPage,
    AuditQuery,
    AuditRecord,
    InvalidCursorError,
    decode_cursor,
    encode_cursor,
)
from shared.db.session import platform_transaction, tenant_transaction, tenant_write

_CURSOR_KIND = "pg"

_INSERT = sql.SQL(
    "INSERT INTO app.audit_events (tenant_id, id, occurred_at, principal_id, action, resource_type, resource_id,"
    " decision, reason, request_id, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_SELECT = sql.SQL(
    "SELECT tenant_id, id, occurred_at, principal_id, action, resource_type, resource_id, decision, reason,"
    " request_id, detail FROM app.audit_events WHERE {where} ORDER BY occurred_at DESC, id DESC LIMIT %s"
)
# Each optional filter is a fixed fragment; only values travel as parameters.
_EQUALS_FILTERS = ("action", "decision", "principal_id", "resource_type", "resource_id")
# Every column, as the export archived the table before the stores exported their trails (ADR 0012).
_EXPORT = "SELECT * FROM app.audit_events WHERE tenant_id = %s"
EXPORT_BATCH_ROWS = 500
"""Rows an export reads at once, through a server-side cursor."""


class PostgresAuditStore:
    """Audit records in `app.audit_events`; every read and write runs inside the record's tenant context."""

    def __init__(
        self, pool: ConnectionPool[Any] | None = None, control_pool: ConnectionPool[Any] | None = None
    ) -> None:
        # None: the process-wide pools, looked up at each use (they may be replaced, e.g. after a reconfiguration).
        # Two pools, as in the app: tenant transactions on the runtime login, erasure on the control plane's.
        self._pool = pool
        self._control_pool = control_pool

    def record(self, record: AuditRecord, *, conn: psycopg.Connection[Any] | None = None) -> None:
        """Append `record` inside `conn`'s open transaction if given, else in its own tenant transaction."""
        if conn is not None:
            self.record_in(conn, record)
            return
        # One round trip: the INSERT and its COMMIT travel with BEGIN, and the COMMIT is acknowledged (durable)
        # before this returns.
        with tenant_write(record.tenant_id, pool=self._pool) as own:
            self.record_in(own, record)

    def record_in(self, conn: psycopg.Connection[Any], record: AuditRecord) -> None:
        """Append `record` inside the caller's open tenant transaction, so it commits or rolls back with it."""
        conn.execute(
            _INSERT,
            (
                record.tenant_id,
                record.id,
                record.occurred_at,
                record.principal_id,
                record.action,
                record.resource_type,
                record.resource_id,
                record.decision,
                record.reason,
                record.request_id,
                Jsonb(dict(record.detail)),
            ),
        )

    def relay_queued(self) -> int:
        """Nothing waits: this store writes inside the caller's transaction."""
        return 0

    def erase(self, tenant_id: uuid.UUID) -> int:
        """Delete the tenant's records, as the control plane through its tenant-bound DELETE policy."""
        with platform_transaction(pool=self._control_pool) as conn:
            conn.execute("SELECT app.pin_tenant(%s)", (tenant_id,))
            return int(conn.execute("DELETE FROM app.audit_events").rowcount)

    def erase_outlived(self, tenant_id: uuid.UUID) -> int:  # noqa: ARG002  # the interface's
        """Nothing to delete: this store writes inside its tenant's transaction, never after it as an outbox copy does,
        and refuses a record of a tenant whose row is gone (migration 0060), so none outlives the erasure."""
        return 0

    def export(self, tenant_id: uuid.UUID, *, conn: psycopg.Connection[Any] | None = None) -> Iterator[dict[str, Any]]:
        """The tenant's rows of `app.audit_events`, every column, `EXPORT_BATCH_ROWS` at a time: inside `conn` (the
        export's tenant transaction) if given, else in a tenant transaction held until the iteration ends."""
        if conn is not None:
            yield from _exported(conn, tenant_id)
            return
        with tenant_transaction(tenant_id, pool=self._pool) as own:
            yield from _exported(own, tenant_id)

    def query(self, q: AuditQuery) -> AuditPage:
        """One page of `q.tenant_id`'s records, newest first, after the cursor's position."""
        # The explicit tenant predicate duplicates row-level security on purpose: it also lets the
        # planner use the (tenant_id, occurred_at, id) index.
        where: list[sql.Composable] = [sql.SQL("tenant_id = %s")]
        params: list[Any] = [q.tenant_id]
        for name in _EQUALS_FILTERS:
            value = getattr(q, name)
            if value is not None:
                where.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
                params.append(value)
        if q.since is not None:
            where.append(sql.SQL("occurred_at >= %s"))
            params.append(q.since)
        if q.until is not None:
            where.append(sql.SQL("occurred_at < %s"))
            params.append(q.until)
        position = decode_cursor(_CURSOR_KIND, q)
        if position is not None:
            after_time, after_id = _parse_position(position)
            # Row comparison: strictly after the last row of the previous page in (occurred_at, id) order.
            where.append(sql.SQL("(occurred_at, id) < (%s, %s)"))
            params.extend([after_time, after_id])
        params.append(q.limit + 1)  # one extra row tells whether another page exists
        statement = _SELECT.format(where=sql.SQL(" AND ").join(where))
        with tenant_transaction(q.tenant_id, pool=self._pool) as conn:
            rows = conn.cursor(row_factory=dict_row).execute(statement, params).fetchall()
        items = [_to_record(row) for row in rows[: q.limit]]
        next_cursor = None
        if len(rows) > q.limit:
            last = items[-1]
            next_cursor = encode_cursor(_CURSOR_KIND, q, {"at": last.occurred_at.isoformat(), "id": str(last.id)})
        return AuditPage(items=items, next_cursor=next_cursor)


def _exported(conn: psycopg.Connection[Any], tenant_id: uuid.UUID) -> Iterator[dict[str, Any]]:
    """The tenant's rows read through a server-side cursor; the explicit predicate duplicates row-level security."""
    with conn.cursor(name="export_audit_events", row_factory=dict_row) as cursor:
        cursor.execute(_EXPORT, (tenant_id,))
        while rows := cursor.fetchmany(EXPORT_BATCH_ROWS):
            yield from rows


def _parse_position(position: dict[str, str]) -> tuple[datetime, uuid.UUID]:
    try:
        at = datetime.fromisoformat(position["at"])
        return at, uuid.UUID(position["id"])
    except (KeyError, ValueError):
        raise InvalidCursorError("malformed cursor") from None


def _to_record(row: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        tenant_id=row["tenant_id"],
        id=row["id"],
        occurred_at=row["occurred_at"],
        principal_id=row["principal_id"],
        action=row["action"],
        resource_type=row["resource_type"],
        resource_id=row["resource_id"],
        decision=row["decision"],
        reason=row["reason"],
        request_id=row["request_id"],
        detail=row["detail"],
    )
