# intent_ref: platform.ingress
"""The tenant's record of intent-requests events that started nothing (the event's only answer), newest first.

The record is bounded per tenant: each new row trims the tenant's oldest beyond `KEPT` and any older than `RETENTION`
(migration 0026), so a principal that floods the hub with invalid events cannot grow the shared table without end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from shared.engine.start import Conn
from shared.pagination import InvalidCursorError, cursor_text, decode_cursor, encode_cursor

# A redelivered event finds its row and records nothing new (the caller then emits no second telemetry line).
_INSERT = (
    "INSERT INTO app.ingress_rejections (tenant_id, hub, partition_id, sequence_number, enqueued_time, reason,"
    " detail, requested_by, idempotency_key)"
    " VALUES (app.current_tenant_id(), %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (tenant_id, hub, partition_id, sequence_number) DO NOTHING RETURNING id"
)
_TRIM = "SELECT app.trim_ingress_rejections(%s, %s) AS removed"
_PAGE = (
    "SELECT id, hub, partition_id, sequence_number, enqueued_time, reason, detail, requested_by,"
    " idempotency_key, created_at FROM app.ingress_rejections"
    " WHERE (%(t)s::timestamptz IS NULL OR (created_at, id) < (%(t)s::timestamptz, %(id)s::uuid))"
    " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
)


KEPT = 1000
"""The newest rejections a tenant keeps (the database keeps at least 100, whatever a caller asks)."""
RETENTION = timedelta(days=30)
"""How long a rejection is kept at most (the database keeps at least a day)."""


@dataclass(frozen=True)
class Rejection:
    """One event that started nothing: where it was on the hub, why, and who sent it."""

    id: UUID
    hub: str
    partition_id: str
    sequence_number: int
    enqueued_time: datetime | None
    reason: str
    detail: dict[str, Any]
    requested_by: str | None
    idempotency_key: str | None
    created_at: datetime


@dataclass(frozen=True)
class NewRejection:
    """What is recorded about a rejected event (never its token)."""

    hub: str
    partition_id: str
    sequence_number: int
    enqueued_time: datetime | None
    reason: str
    detail: dict[str, Any]
    requested_by: str | None = None
    idempotency_key: str | None = None


def record_rejection(
    conn: Conn, rejection: NewRejection, *, keep: int = KEPT, retention: timedelta = RETENTION
) -> bool:
    """Record it in the caller's tenant transaction, trimming the tenant's record to the newest `keep` rows within
    `retention`; False when this event was already recorded (and nothing is trimmed)."""
    row = conn.execute(
        _INSERT,
        (
            rejection.hub,
            rejection.partition_id,
            rejection.sequence_number,
            rejection.enqueued_time,
            rejection.reason,
            Jsonb(rejection.detail),
            rejection.requested_by,
            rejection.idempotency_key,
        ),
    ).fetchone()
    if row is None:
        return False
    conn.execute(_TRIM, (keep, retention))
    return True


def list_rejections(conn: Conn, *, cursor: str | None = None, limit: int = 50) -> tuple[list[Rejection], str | None]:
    """One page of the tenant's rejections, newest first, and the next page's cursor (None on the last)."""
    position = decode_cursor(cursor)
    after: tuple[datetime | None, UUID | None] = (None, None)
    if position is not None:
        try:
            after = (datetime.fromisoformat(str(cursor_text(position, "t"))), UUID(cursor_text(position, "id")))
        except (TypeError, ValueError):
            raise InvalidCursorError("the cursor is not one this API issued") from None
    rows = conn.execute(_PAGE, {"t": after[0], "id": after[1], "limit": limit + 1}).fetchall()
    page = [Rejection(**row) for row in rows[:limit]]
    more = len(rows) > limit
    return page, encode_cursor({"t": page[-1].created_at.isoformat(), "id": str(page[-1].id)}) if more else None
