# intent_ref: platform.ingress
"""The tenant's record of intent-requests events that started nothing (the event's only answer), newest first.

The record is bounded per principal: each new row trims its sender's oldest beyond `KEPT` (the rows of an unknown
sender are one group of their own), so a principal that floods the hub with invalid events evicts only its own rows
and cannot grow the shared table without end. It is bounded per tenant too: past `TENANT_KEPT` rows the deepest of
each principal's go first, so every principal keeps at least its share of it; and no row outlives `RETENTION`
(migrations 0026, 0063).
A row younger than `REDELIVERY_WINDOW` whose cause can go away (quota, a refusal of policy or grant, a suspension, an
intent not found, a conflict, an input its version refused) is not deleted by those counts but shrunk to a marker
(`trimmed`: no document, principal nor key; left out of the listing): its event may still be delivered, and the
marker keeps its rejection final (migration 0079). A body that is not a request and a stale event are refused the same
on every delivery: their rows are deleted as before, so they make no markers. A marker keeps its sender's group (a
hash of the principal, never the principal), so a sender keeps at most `KEPT` markers and a tenant at most
`TENANT_KEPT`, the deepest of each sender's deleted first past that. A tenant's records take turns under its
`ingress-rejections` lock row (migration 0082), so two trims at once keep the bound and never deadlock on each other's
rows; only the tenant's own transactions can take that row. The tenant's bound is applied once its full rows pass it
by a tenth, then back to it.
Each row is bounded too: a problem document larger than `MAX_DETAIL_BYTES` is stored as a short summary of itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from psycopg.types.json import Jsonb

from shared.db import tenant_locks
from shared.engine.start import Conn
from shared.pagination import InvalidCursorError, cursor_text, decode_cursor, encode_cursor
from shared.registry.schema_refs import short_message

# A redelivered event finds its row and records nothing new (the caller then emits no second telemetry line); a new
# event at the place of an earlier hub's (recreated, it numbers its events from the start again) replaces that row,
# through a function pinned to the tenant as the trim is: the runtime may not delete (migration 0068).
_INSERT = "SELECT app.record_ingress_rejection(%s, %s, %s, %s, %s, %s, %s, %s, %s) AS recorded"
# The place and the hub's stamp: a hub recreated numbers its events from the start again, and a new event at an old
# rejection's place would otherwise be answered with that rejection, unstarted and unrecorded.
_RECORDED = (
    "SELECT reason FROM app.ingress_rejections WHERE hub = %s AND partition_id = %s AND sequence_number = %s"
    " AND enqueued_time IS NOT DISTINCT FROM %s"
)
_TRIM = "SELECT app.trim_ingress_rejections(%s, %s, %s, %s) AS removed"
_PAGE = (
    "SELECT id, hub, partition_id, sequence_number, enqueued_time, reason, detail, requested_by,"
    " idempotency_key, created_at FROM app.ingress_rejections"
    " WHERE NOT trimmed AND (%(t)s::timestamptz IS NULL OR (created_at, id) < (%(t)s::timestamptz, %(id)s::uuid))"
    " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
)


KEPT = 1000
"""The newest rejections each principal of a tenant keeps (the database keeps at least 100, whatever a caller asks)."""
TENANT_KEPT = 10 * KEPT
"""The most rejections a tenant keeps in all: each of its G principals with rejections keeps at least its newest
min(KEPT, TENANT_KEPT / G), so up to 10 of them keep all of theirs (the database keeps at least 1,000 and `KEPT`)."""
REDELIVERY_WINDOW = timedelta(hours=25)
"""How long after its record an event may still be delivered and started: the 24 h stale limit (`MAX_EVENT_AGE`)
plus its processing's retries. The database holds it (migration 0079): the count trims never delete a row younger
whose cause can go away, they make it a marker (at most `TENANT_KEPT` of a tenant's); and it is the retention's
floor."""
TENANT_SLACK = TENANT_KEPT // 10
"""How far past `TENANT_KEPT` a tenant's full rows go before they are trimmed back to it (the database's tenth)."""
RETENTION = timedelta(days=30)
"""How long a rejection is kept at most (the database keeps at least `REDELIVERY_WINDOW`)."""
MAX_DETAIL_BYTES = 32 * 1024
"""The largest problem document stored with a rejection (its JSON text, UTF-8). The translations keep documents well
under it (ADR 0019); this is the backstop that keeps a listing page of the largest allowed size bounded whatever a
translation lets through."""
_SUMMARY_MEMBERS = ("type", "title", "status", "instance", "reason")


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
    id: UUID = field(default_factory=uuid4)
    """The row's id: the ingress names the event by it in the problem document's instance."""


def bounded_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """`detail` itself when its JSON text is at most MAX_DETAIL_BYTES, else a summary: the document's type, title,
    status, instance and reason (each text shortened), a `detail` saying how large it was, and `truncated`."""
    size = len(json.dumps(detail, ensure_ascii=False).encode("utf-8", errors="replace"))
    if size <= MAX_DETAIL_BYTES:
        return detail
    summary: dict[str, Any] = {
        name: short_message(value) if isinstance(value, str) else value
        for name, value in detail.items()
        if name in _SUMMARY_MEMBERS and isinstance(value, str | int) and not isinstance(value, bool)
    }
    said = detail.get("detail")
    summary["detail"] = short_message(
        f"The problem document was {size} bytes, over the {MAX_DETAIL_BYTES} kept: its other members are left out."
        + (f" {said}" if isinstance(said, str) else "")
    )
    summary["truncated"] = True
    return summary


def record_rejection(
    conn: Conn,
    rejection: NewRejection,
    *,
    keep: int = KEPT,
    tenant_keep: int = TENANT_KEPT,
    retention: timedelta = RETENTION,
) -> bool:
    """Record it in the caller's tenant transaction (its problem document bounded by `bounded_detail`), trimming its
    sender's rejections to their newest `keep`, the tenant's to `tenant_keep` in all (its principals' deepest first)
    and both to `retention`; False when this event was already recorded (and nothing is trimmed). A row at the same
    place with another enqueued time, an event of the hub before it was recreated, is replaced by this one.

    Takes the tenant's `ingress-rejections` lock until the transaction ends, before any row: the tenant's trims run one
    after the other. A caller that holds the start lock (`executions`) took it first; none takes that one after."""
    tenant_locks.hold(conn, "ingress-rejections")
    row = conn.execute(
        _INSERT,
        (
            rejection.id,
            rejection.hub,
            rejection.partition_id,
            rejection.sequence_number,
            rejection.enqueued_time,
            rejection.reason,
            Jsonb(bounded_detail(rejection.detail)),
            rejection.requested_by,
            rejection.idempotency_key,
        ),
    ).fetchone()
    if row is None or not row["recorded"]:
        return False
    conn.execute(_TRIM, (rejection.requested_by, keep, tenant_keep, retention))
    return True


def recorded_reason(
    conn: Conn, hub: str, partition_id: str, sequence_number: int, enqueued_time: datetime | None
) -> str | None:
    """The reason recorded for the event at this place on the hub, enqueued at `enqueued_time`, in the caller's
    tenant; None when none is (or its row was trimmed: a row is deleted only once its event can no longer start
    anything, `REDELIVERY_WINDOW`; before, it is kept as a marker)."""
    row = conn.execute(_RECORDED, (hub, partition_id, sequence_number, enqueued_time)).fetchone()
    return None if row is None else str(row["reason"])


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
