# intent_ref: platform.audit
"""The audit record, its query and page, the store interface, and the opaque page cursor."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, get_args

import psycopg

from shared import pagination
from shared.accepted_json import (
    INTEGER_OUT_OF_RANGE,
    MAX_INT,
    MIN_INT,
    NON_FINITE_NUMBER,
    UNSTORABLE_TEXT,
    text_refusal,
)

Decision = Literal["allow", "deny"]
_DECISIONS = frozenset(get_args(Decision))

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
MAX_DETAIL_BYTES = 8 * 1024
"""The most a new record's detail may take (`detail_bytes`: as it is sent, JSON with non-ASCII escaped as the Cosmos
DB SDK writes it, and at least as Postgres prints it): a larger one is replaced by `DETAIL_CUT`, its size and digest
(`AuditRecord.new`, the write path only: a stored record reads back exactly as stored). Without a bound the request
decided a record's size: a name of a million characters made a 3 MB document that Cosmos DB refused for good (413),
and so hid the request's records; in Postgres a megabyte a record. A listing's record names its keys over as many
records as keep each under it (`split_listing`). Migration 0072 bounds the columns safely above this."""
DETAIL_CUT = "detail_cut"
"""The key of the marker that replaces a detail over `MAX_DETAIL_BYTES`, or one Postgres cannot store (`unstorable`);
beside it `detail_bytes` (its size), `detail_keys` (how many keys it had), `detail_sha256` (the digest of its canonical
JSON: a copy kept elsewhere can be matched to it) and, for one that cannot be stored, `detail_unstorable` (why)."""

logger = logging.getLogger(__name__)


class InvalidCursorError(pagination.InvalidCursorError):
    """A cursor that this store did not issue for this tenant and these filters (the gateway answers 400)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AuditRecord:
    """One audited event: a mutation or an authorization decision, by one principal, in one tenant."""

    tenant_id: uuid.UUID
    principal_id: str
    """`<tid>/<oid>` of the Entra principal, or a named platform actor."""
    action: str
    resource_type: str
    resource_id: str | None
    decision: Decision
    reason: str = ""
    request_id: str | None = None
    occurred_at: datetime = field(default_factory=_utc_now)
    detail: Mapping[str, Any] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        if not isinstance(self.tenant_id, uuid.UUID):
            raise TypeError("tenant_id must be a UUID")
        if self.decision not in _DECISIONS:
            raise ValueError(f"decision must be one of {sorted(_DECISIONS)}")
        if self.occurred_at.tzinfo is None:
            # A naive time would be read back shifted by the server's zone; refuse it here.
            raise ValueError("occurred_at must be timezone-aware")
        for name in ("principal_id", "action", "resource_type"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")

    @classmethod
    def new(cls, **fields: Any) -> AuditRecord:
        """A new record with a fresh id (and the current time unless `occurred_at` is given), its detail bounded at
        `MAX_DETAIL_BYTES` (`bounded_detail`). Only here, on the way in: a record read back from a store is built
        with the constructor and keeps its detail exactly as stored, however large (records written before the
        bound; an offboarding archive must hold them whole)."""
        if "detail" in fields:
            fields["detail"] = bounded_detail(fields["detail"] or {}, action=str(fields.get("action", "")))
        return cls(**fields)

    def to_public(self) -> dict[str, Any]:
        """The record as the API returns it: JSON-ready, snake_case."""
        return {
            "id": str(self.id),
            "tenant_id": str(self.tenant_id),
            "occurred_at": self.occurred_at.isoformat(),
            "principal_id": self.principal_id,
            "action": self.action,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "decision": self.decision,
            "reason": self.reason,
            "request_id": self.request_id,
            "detail": dict(self.detail),
        }


def detail_bytes(detail: Mapping[str, Any]) -> int:
    """The size of `detail` as a store is sent it and as Postgres prints it, whichever is larger: JSON, non-ASCII
    escaped (six bytes a character and more, where the text Postgres keeps takes two to four), each float counted
    at its fixed-point length too (jsonb keeps numbers as `numeric` and prints 1e300 with 301 digits, 1e-300 with
    302 characters: measured as sent alone, a detail the record took could fail the column's CHECK, migration
    0072)."""
    return len(_canonical(detail)) + _float_excess(detail)


def _canonical(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), ensure_ascii=True, default=str)


def _float_excess(value: Any) -> int:
    """How many characters more the floats in `value` take printed in fixed point than as JSON sends them."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return 0
        sent = json.dumps(value)
        fixed = format(Decimal(sent), "f")
        return max(0, len(fixed) - len(sent))
    if isinstance(value, Mapping):
        return sum(_float_excess(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_float_excess(item) for item in value)
    return 0


def unstorable(detail: Mapping[str, Any]) -> str | None:
    """Why Postgres cannot store `detail` or read it back (its `accepted_json` code), or None: a NUL or a lone
    surrogate in a string or a member name (jsonb refuses both), a non-finite number (JSON has none), an integer
    beyond a bigint (stored, but past a float's range every page holding it failed to read)."""
    stack: list[Any] = [detail]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if text_refusal(value) is not None:
                return UNSTORABLE_TEXT
        elif isinstance(value, Mapping):
            stack.extend(key for key in value if isinstance(key, str))
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                return NON_FINITE_NUMBER
        elif isinstance(value, int) and not isinstance(value, bool) and not MIN_INT <= value <= MAX_INT:
            return INTEGER_OUT_OF_RANGE
    return None


def bounded_detail(detail: Mapping[str, Any], *, action: str = "") -> Mapping[str, Any]:
    """`detail` if it takes at most `MAX_DETAIL_BYTES` (`detail_bytes`) and can be stored (`unstorable`), else the
    marker that replaces it: the record is kept (its action, decision and reason are the trail), and the marker says
    what gave way: its size, how many keys it had, and the SHA-256 of its canonical JSON (either None when Python
    cannot print the detail: an integer of over 4,300 digits), and for a detail that cannot be stored, why
    (`detail_unstorable`). A detail Postgres refused failed the request's transaction (500)."""
    why = unstorable(detail)
    try:
        size: int | None = detail_bytes(detail)
    except ValueError:  # an integer too long for Python to print (sys.get_int_max_str_digits)
        size = None
    if why is None and size is not None and size <= MAX_DETAIL_BYTES:
        return detail
    try:
        text = json.dumps(dict(detail), ensure_ascii=True, default=str, sort_keys=True)
        digest: str | None = hashlib.sha256(text.encode()).hexdigest()
    except ValueError:
        digest = None
    marker: dict[str, Any] = {
        DETAIL_CUT: True,
        "detail_bytes": size,
        "detail_keys": len(detail),
        "detail_sha256": digest,
    }
    if why is not None:
        logger.warning("audit: the detail of a %s record cannot be stored (%s): replaced", action, why)
        marker["detail_unstorable"] = why
    else:
        logger.warning("audit: the detail of a %s record (%s bytes) was cut", action, size)
    return marker


_PART_ROOM = 64
"""Bytes kept in each part of a split listing for its `part` and `parts`."""


def split_listing(base: Mapping[str, Any], named: str, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The details of a listing's records naming `keys` under `named` beside `base`: one if it fits in
    `MAX_DETAIL_BYTES`, else as many as keep each under it, in order, each saying its `part` (from 1) of `parts`
    (ADR 0011 amended 2026-12-06: every listed key is named; a listing of 500 ids or 100 long module actions took
    13 to 20 KB, and one record of it was cut to the marker). A key too large for a part alone goes in one of its
    own, which `bounded_detail` then cuts."""
    whole = {**base, named: list(keys)}
    if detail_bytes(whole) <= MAX_DETAIL_BYTES:
        return [whole]
    room = MAX_DETAIL_BYTES - _PART_ROOM - detail_bytes({**base, named: []})
    chunks: list[list[str]] = [[]]
    used = 0
    for key in keys:
        size = len(json.dumps(key, ensure_ascii=True)) + 2  # the key and its separator
        if chunks[-1] and used + size > room:
            chunks.append([])
            used = 0
        chunks[-1].append(key)
        used += size
    return [{**base, named: chunk, "part": i, "parts": len(chunks)} for i, chunk in enumerate(chunks, start=1)]


@dataclass(frozen=True)
class AuditQuery:
    """One tenant's audit records, newest first; every filter is optional (since inclusive, until exclusive)."""

    tenant_id: uuid.UUID
    action: str | None = None
    decision: Decision | None = None
    principal_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_PAGE_SIZE
    cursor: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tenant_id, uuid.UUID):
            raise TypeError("tenant_id must be a UUID")
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        if self.decision is not None and self.decision not in _DECISIONS:
            raise ValueError(f"decision must be one of {sorted(_DECISIONS)}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware")

    def fingerprint(self) -> str:
        """A short digest of the tenant and filters, so a cursor cannot be replayed against another query."""
        parts = [
            self.tenant_id,
            self.action,
            self.decision,
            self.principal_id,
            self.resource_type,
            self.resource_id,
            self.since,
            self.until,
        ]
        text = json.dumps([None if p is None else str(p) for p in parts])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AuditPage:
    """One page of records; `next_cursor` is None on the last page."""

    items: Sequence[AuditRecord]
    next_cursor: str | None


class AuditStore(Protocol):
    """Where audit records are appended and read back; one tenant per call."""

    def record(self, record: AuditRecord, *, conn: psycopg.Connection[Any] | None = None) -> None:
        """Append one record (never updates an existing one).

        With `conn` (the caller's open tenant transaction) the record commits or rolls back with the caller's
        mutation: a store that lives in that database writes inside it, another queues it in the audit outbox
        inside it and writes it once the transaction has committed. Without, the record is written at once.
        """
        ...

    def query(self, q: AuditQuery) -> AuditPage:
        """One page of the tenant's records matching `q`, newest first."""
        ...

    def erase(self, tenant_id: uuid.UUID) -> int:
        """Remove every record of the tenant (offboarding); returns how many were removed."""
        ...

    def erase_outlived(self, tenant_id: uuid.UUID) -> int:
        """Remove every record of an erased tenant but its erasure's own (`outbox.outlives_tenant`): what a copy
        wrote as the tenant was erased and could not undo (ADR 0046's sweep); returns how many were removed."""
        ...

    def export(self, tenant_id: uuid.UUID, *, conn: psycopg.Connection[Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every record of the tenant (offboarding's export), read a page at a time as it is iterated, so a long trail
        is never held whole; each as a row of `app.audit_events` (its columns as keys). With `conn` (the export's open
        tenant transaction) a store in that database reads inside it, in the snapshot of the export's other rows."""
        ...

    def relay_queued(self) -> int:
        """Write the records still waiting in the audit outbox, for a store that cannot join the caller's transaction
        (migration 0027); returns how many were written."""
        ...


def encode_cursor(kind: str, q: AuditQuery, position: Mapping[str, str]) -> str:
    """An opaque cursor carrying a backend position, bound to the query that produced it."""
    return pagination.encode_cursor({"v": 1, "k": kind, "f": q.fingerprint(), "p": dict(position)})


def decode_cursor(kind: str, q: AuditQuery) -> dict[str, str] | None:
    """The position in `q.cursor` (None without a cursor); InvalidCursorError when it is not ours."""
    try:
        payload = pagination.decode_cursor(q.cursor)
    except pagination.InvalidCursorError:
        raise InvalidCursorError("malformed cursor") from None
    if payload is None:
        return None
    if payload.get("v") != 1 or payload.get("k") != kind:
        raise InvalidCursorError("malformed cursor")
    if payload.get("f") != q.fingerprint():
        raise InvalidCursorError("cursor belongs to a different query")
    position = payload.get("p")
    if not isinstance(position, dict) or not all(isinstance(v, str) for v in position.values()):
        raise InvalidCursorError("malformed cursor")
    return {str(k): v for k, v in position.items()}
