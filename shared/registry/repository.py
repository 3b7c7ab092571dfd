# intent_ref: platform.registry
"""SQL for intents and blueprints (one code path, parameterized by kind) and their immutable versions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

Kind = Literal["intent", "blueprint"]
Status = Literal["active", "archived"]

_HEAD_COLUMNS = (
    "id",
    "kind",
    "name",
    "description",
    "labels",
    "status",
    "current_version",
    "created_by",
    "created_at",
    "updated_at",
    "archived_at",
)
_VERSION_COLUMNS = (
    "version",
    "description",
    "labels",
    "definition",
    "definition_sha256",
    "origin",
    "blueprint_ref",
    "created_by",
    "created_at",
)


def _columns(names: tuple[str, ...], table: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(table, name) if table else sql.Identifier(name) for name in names)


_HEAD = _columns(_HEAD_COLUMNS)
_HEAD_I = _columns(_HEAD_COLUMNS, "i")
_VERSION_V = _columns(_VERSION_COLUMNS, "v")
_JOIN = sql.SQL("FROM app.intent_versions v JOIN app.intents i ON i.tenant_id = v.tenant_id AND i.id = v.intent_id")

# Every statement filters on kind as well as id: an intent's id on the blueprints routes (or the reverse) finds
# nothing, exactly like another tenant's id (which row-level security hides).
_GET_HEAD = sql.SQL("SELECT {} FROM app.intents WHERE kind = %s AND id = %s").format(_HEAD)
_LOCK_HEAD = sql.SQL("SELECT {} FROM app.intents WHERE kind = %s AND id = %s FOR UPDATE").format(_HEAD)
# A share lock conflicts with the archive's (and an update's) FOR UPDATE, not with other holders: saves of many
# declarations of one blueprint go on side by side, and the blueprint cannot be archived under any of them.
_SHARE_HEAD = sql.SQL("SELECT {} FROM app.intents WHERE kind = %s AND id = %s FOR SHARE").format(_HEAD)
_SHARE_ACTIVE_BLUEPRINT = sql.SQL(
    "SELECT id FROM app.intents WHERE kind = 'blueprint' AND name = %s AND status = 'active' FOR SHARE"
)
_INSERT_HEAD = sql.SQL(
    "INSERT INTO app.intents (tenant_id, id, kind, name, description, labels, created_by)"
    " VALUES (app.current_tenant_id(), %s, %s, %s, %s, %s, %s) RETURNING {}"
).format(_HEAD)
_INSERT_VERSION = sql.SQL(
    "INSERT INTO app.intent_versions (tenant_id, intent_id, version, description, labels, definition,"
    " definition_sha256, origin, blueprint_ref, created_by)"
    " VALUES (app.current_tenant_id(), %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {}"
).format(_columns(_VERSION_COLUMNS))
# Conditional on the version the caller read (under its row lock): a second writer can never move the head twice
# from the same version, even if a caller forgot the lock.
_ADVANCE_HEAD = sql.SQL(
    "UPDATE app.intents SET current_version = %s, description = %s, labels = %s, updated_at = clock_timestamp()"
    " WHERE kind = %s AND id = %s AND current_version = %s AND status = 'active' RETURNING {}"
).format(_HEAD)
_ARCHIVE_HEAD = sql.SQL(
    "UPDATE app.intents SET status = 'archived', archived_at = clock_timestamp(), updated_at = clock_timestamp()"
    " WHERE kind = %s AND id = %s AND status = 'active' RETURNING {}"
).format(_HEAD)
_GET_VERSION = sql.SQL("SELECT {} {} WHERE i.kind = %s AND v.intent_id = %s AND v.version = %s").format(
    _VERSION_V, _JOIN
)
# By id and number alone: an execution names the intent version it runs, and row-level security keeps it the tenant's.
_VERSION_LABELS = sql.SQL("SELECT labels FROM app.intent_versions WHERE intent_id = %s AND version = %s")
# A page of versions grows one version at a time, oldest first, while it holds fewer than `limit` and their
# definitions and descriptions, as Postgres writes them out, fit `budget` bytes (the first always: a page is never
# empty while versions remain). Each step finds the next version by the primary key and measures it alone, so only
# the versions answered (and the one that no longer fits) are written out; a version's definition is up to the
# definition limit, and 200 of them made an answer of 50 MB. `more`: whether a version follows the page's last.
_VERSION_SIZE = sql.SQL("octet_length(w.definition::text) + octet_length(w.description)")
_PAGE_VERSIONS = sql.SQL(
    "WITH RECURSIVE page (version, total, taken) AS ("
    " SELECT first.version, first.bytes, 1 FROM ("
    "  SELECT w.version, {size} AS bytes FROM app.intent_versions w"
    "  WHERE w.intent_id = %(id)s AND w.version > %(after)s ORDER BY w.version LIMIT 1) first"
    " UNION ALL"
    " SELECT next.version, page.total + next.bytes, page.taken + 1 FROM page CROSS JOIN LATERAL ("
    "  SELECT w.version, {size} AS bytes FROM app.intent_versions w"
    "  WHERE w.intent_id = %(id)s AND w.version > page.version ORDER BY w.version LIMIT 1) next"
    " WHERE page.taken < %(limit)s AND page.total + next.bytes <= %(budget)s)"
    " SELECT {columns}, EXISTS (SELECT 1 FROM app.intent_versions w WHERE w.intent_id = %(id)s"
    "  AND w.version > (SELECT max(version) FROM page)) AS more"
    " {join} JOIN page ON page.version = v.version WHERE i.kind = %(kind)s AND v.intent_id = %(id)s"
    " ORDER BY v.version"
).format(size=_VERSION_SIZE, columns=_VERSION_V, join=_JOIN)
# With the current version's target (a string one; NULL otherwise), which a read of the item is decided on beside
# its labels: the listing leaves out what the caller may not read without a query per item.
_PAGE_HEADS = sql.SQL(
    "SELECT {}, CASE WHEN jsonb_typeof(v.definition -> 'target') = 'string' THEN v.definition ->> 'target' END"
    " AS target FROM app.intents i JOIN app.intent_versions v"
    " ON v.tenant_id = i.tenant_id AND v.intent_id = i.id AND v.version = i.current_version"
    " WHERE i.kind = %(kind)s"
    " AND (%(prefix)s::text IS NULL OR starts_with(i.name, %(prefix)s::text))"
    " AND (%(status)s::text IS NULL OR i.status = %(status)s::text)"
    " AND i.labels @> %(labels)s"
    " AND (%(after)s::text IS NULL OR i.name > %(after)s::text)"
    " ORDER BY i.name LIMIT %(limit)s"
).format(_HEAD_I)
_CURRENT_BLUEPRINT = sql.SQL(
    "SELECT i.id, i.name, v.version, v.definition {} WHERE i.kind = 'blueprint' AND i.name = %s"
    " AND i.status = 'active' AND v.version = i.current_version"
).format(_JOIN)
# An equality on name: the (tenant, kind, status, name) index finds the row itself. A prefix test on name is only a
# filter there, which walked the index from the first of the tenant's names (thousands of rows for one look-up).
_FIND_ACTIVE_HEAD = sql.SQL("SELECT {} FROM app.intents WHERE kind = %s AND name = %s AND status = 'active'").format(
    _HEAD
)
# The same index, one probe per name.
_FIND_ACTIVE_HEADS = sql.SQL(
    "SELECT {} FROM app.intents WHERE kind = %s AND name = ANY(%s::text[]) AND status = 'active'"
).format(_HEAD)
_NAME_TAKEN = sql.SQL("SELECT 1 FROM app.intents WHERE kind = %s AND name = %s")
_VERSION_EXISTS = sql.SQL("SELECT 1 {} WHERE i.kind = %s AND v.intent_id = %s AND v.version = %s").format(_JOIN)
_BLUEPRINT_VERSION = sql.SQL(
    "SELECT i.id, i.name, v.version, v.definition {} WHERE i.kind = 'blueprint' AND i.id = %s AND v.version = %s"
).format(_JOIN)


class NameTakenError(Exception):
    """The tenant already has an intent (or blueprint) of that name, archived ones included."""


class ValueRefusedError(Exception):
    """A CHECK constraint of the registry's tables refused a value that validation let through (the model and a
    migration disagree); `constraint` names it, e.g. `intents_name_check`."""

    def __init__(self, constraint: str | None) -> None:
        super().__init__(f"the value breaks the table's constraint {constraint}")
        self.constraint = constraint


@dataclass(frozen=True)
class HeadRow:
    """The mutable row of an intent or blueprint: identity, status and which version is current."""

    id: UUID
    kind: Kind
    name: str
    description: str
    labels: dict[str, str]
    status: Status
    current_version: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


@dataclass(frozen=True)
class ListedHead(HeadRow):
    """A head as the list reads it, with its current version's `target` (None when it has no string one); its
    `labels` are the current version's (a new version writes both)."""

    target: str | None


@dataclass(frozen=True)
class VersionRow:
    """One immutable version."""

    version: int
    description: str
    labels: dict[str, str]
    definition: dict[str, Any]
    definition_sha256: str
    origin: dict[str, Any]
    blueprint_ref: dict[str, Any] | None
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class NewVersion:
    """What a new version stores (the head's description and labels follow it)."""

    description: str
    labels: dict[str, str]
    definition: dict[str, Any]
    definition_sha256: str
    origin: dict[str, Any]
    blueprint_ref: dict[str, Any] | None


@dataclass(frozen=True)
class BlueprintVersion:
    """A blueprint version as a declaration resolves it."""

    id: UUID
    name: str
    version: int
    definition: dict[str, Any]


def _head(row: DictRow) -> HeadRow:
    return HeadRow(**row)


def _version(row: DictRow) -> VersionRow:
    return VersionRow(**row)


def get_head(conn: psycopg.Connection[DictRow], kind: Kind, item_id: UUID, *, lock: bool = False) -> HeadRow | None:
    """The head row; `lock` holds it until the transaction ends, so writers of one item take turns."""
    row = conn.execute(_LOCK_HEAD if lock else _GET_HEAD, (kind, item_id)).fetchone()
    return _head(row) if row else None


def hold_head(conn: psycopg.Connection[DictRow], kind: Kind, item_id: UUID) -> HeadRow | None:
    """The head row under a share lock held until the transaction ends: its status and current version stay as read
    (an archive or update waits), while other holders read on."""
    row = conn.execute(_SHARE_HEAD, (kind, item_id)).fetchone()
    return _head(row) if row else None


def insert_head(
    conn: psycopg.Connection[DictRow],
    kind: Kind,
    item_id: UUID,
    name: str,
    description: str,
    labels: dict[str, str],
    created_by: str,
) -> HeadRow:
    """A new head at version 1 (its version row is inserted next); a taken name raises NameTakenError, a value a
    CHECK refuses ValueRefusedError."""
    try:
        with conn.transaction():  # a savepoint: the conflict leaves the caller's transaction usable
            row = conn.execute(_INSERT_HEAD, (item_id, kind, name, description, Jsonb(labels), created_by)).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        raise NameTakenError(f"a {kind} named {name!r} exists") from exc
    except psycopg.errors.CheckViolation as exc:
        raise ValueRefusedError(exc.diag.constraint_name) from exc
    assert row is not None  # INSERT ... RETURNING
    return _head(row)


def insert_version(
    conn: psycopg.Connection[DictRow], item_id: UUID, version: int, new: NewVersion, created_by: str
) -> VersionRow:
    """Append version `version`; the primary key refuses a duplicate, whatever the caller checked. A CHECK refusal
    raises ValueRefusedError and leaves the transaction failed (no savepoint: the caller answers with a refusal)."""
    try:
        row = conn.execute(
            _INSERT_VERSION,
            (
                item_id,
                version,
                new.description,
                Jsonb(new.labels),
                Jsonb(new.definition),
                new.definition_sha256,
                Jsonb(new.origin),
                None if new.blueprint_ref is None else Jsonb(new.blueprint_ref),
                created_by,
            ),
        ).fetchone()
    except psycopg.errors.CheckViolation as exc:
        raise ValueRefusedError(exc.diag.constraint_name) from exc
    assert row is not None  # INSERT ... RETURNING
    return _version(row)


def advance_head(
    conn: psycopg.Connection[DictRow],
    kind: Kind,
    item_id: UUID,
    *,
    from_version: int,
    to_version: int,
    description: str,
    labels: dict[str, str],
) -> HeadRow | None:
    """Make `to_version` current if `from_version` still is and the item is active; None otherwise."""
    row = conn.execute(_ADVANCE_HEAD, (to_version, description, Jsonb(labels), kind, item_id, from_version)).fetchone()
    return _head(row) if row else None


def archive_head(conn: psycopg.Connection[DictRow], kind: Kind, item_id: UUID) -> HeadRow | None:
    """Archive an active item; None if it is not active (or not there)."""
    row = conn.execute(_ARCHIVE_HEAD, (kind, item_id)).fetchone()
    return _head(row) if row else None


def get_version(conn: psycopg.Connection[DictRow], kind: Kind, item_id: UUID, version: int) -> VersionRow | None:
    """One version of an item."""
    row = conn.execute(_GET_VERSION, (kind, item_id, version)).fetchone()
    return _version(row) if row else None


def version_labels(conn: psycopg.Connection[DictRow], intent_id: UUID, version: int) -> dict[str, str] | None:
    """The labels of one intent version (the mapping `VersionRow.labels` holds), without its definition; None when
    the tenant has no such version."""
    row = conn.execute(_VERSION_LABELS, (intent_id, version)).fetchone()
    return None if row is None else dict(row["labels"])


def list_versions(
    conn: psycopg.Connection[DictRow], kind: Kind, item_id: UUID, *, after: int, limit: int, budget: int
) -> tuple[list[VersionRow], bool]:
    """Versions after `after`, oldest first: at most `limit`, and as many as fit `budget` bytes of definitions and
    descriptions as Postgres writes them out (at least one, whatever its size); and whether more follow."""
    params = {"kind": kind, "id": item_id, "after": after, "limit": limit, "budget": budget}
    rows = conn.execute(_PAGE_VERSIONS, params).fetchall()
    more = bool(rows) and bool(rows[-1]["more"])
    return [_version({name: row[name] for name in _VERSION_COLUMNS}) for row in rows], more


def list_heads(
    conn: psycopg.Connection[DictRow],
    kind: Kind,
    *,
    name_prefix: str | None,
    labels: dict[str, str],
    status: Status | None,
    after_name: str | None,
    limit: int,
) -> list[ListedHead]:
    """Heads by name after `after_name` (keyset), filtered, each with its current version's target; every label
    given must match."""
    rows = conn.execute(
        _PAGE_HEADS,
        {
            "kind": kind,
            "prefix": name_prefix,
            "status": status,
            "labels": Jsonb(labels),
            "after": after_name,
            "limit": limit,
        },
    ).fetchall()
    return [ListedHead(**row) for row in rows]


def _blueprint(row: DictRow | None) -> BlueprintVersion | None:
    return BlueprintVersion(row["id"], row["name"], row["version"], row["definition"]) if row else None


def current_blueprint(conn: psycopg.Connection[DictRow], name: str, *, hold: bool = False) -> BlueprintVersion | None:
    """The current version of the tenant's active blueprint `name`; an archived one takes no new declarations.

    `hold`: the blueprint stays active and at that version until the transaction ends (a share lock on its head), so
    a version saved against it never commits after an archive that committed in between."""
    # The head is locked by a statement of its own: a lock taken in the join would, after waiting for an update of
    # the blueprint, recheck the new head against the old version row and find nothing. The join then reads what
    # the lock holds in a snapshot taken after it.
    if hold and conn.execute(_SHARE_ACTIVE_BLUEPRINT, (name,)).fetchone() is None:
        return None
    return _blueprint(conn.execute(_CURRENT_BLUEPRINT, (name,)).fetchone())


def blueprint_version(conn: psycopg.Connection[DictRow], blueprint_id: UUID, version: int) -> BlueprintVersion | None:
    """A pinned blueprint version, archived or not: a pin keeps working after its blueprint is archived."""
    return _blueprint(conn.execute(_BLUEPRINT_VERSION, (blueprint_id, version)).fetchone())


def find_head(conn: psycopg.Connection[DictRow], kind: Kind, name: str) -> HeadRow | None:
    """The active item named `name`, if any (names are unique per tenant and kind)."""
    row = conn.execute(_FIND_ACTIVE_HEAD, (kind, name)).fetchone()
    return _head(row) if row else None


def active_heads(conn: psycopg.Connection[DictRow], kind: Kind, names: list[str]) -> dict[str, HeadRow]:
    """`find_head` of each of `names` in one statement: the active items among them, by name."""
    rows = conn.execute(_FIND_ACTIVE_HEADS, (kind, names)).fetchall()
    return {head.name: head for head in map(_head, rows)}


def name_taken(conn: psycopg.Connection[DictRow], kind: Kind, name: str) -> bool:
    """Whether the tenant has an item of `kind` named `name`, archived ones included (they keep their name)."""
    return conn.execute(_NAME_TAKEN, (kind, name)).fetchone() is not None


def version_exists(conn: psycopg.Connection[DictRow], kind: Kind, item_id: UUID, version: int) -> bool:
    """Whether the item has version `version`, without reading its definition."""
    return conn.execute(_VERSION_EXISTS, (kind, item_id, version)).fetchone() is not None
