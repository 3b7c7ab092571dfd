# intent_ref: platform.tenants
"""Tenant rows, read and written by the control plane (role qp_platform: tenants only, no tenant data)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from shared import etags
from shared.pagination import encode_cursor
from shared.tenants.models import (
    MAX_SETTINGS_BYTES,
    MAX_SETTINGS_KEYS,
    Tenant,
    TenantCreate,
    TenantPage,
    TenantQuotas,
    TenantUpdate,
)

logger = logging.getLogger(__name__)

_COLUMNS = sql.SQL(", ").join(
    map(
        sql.Identifier,
        (
            "id",
            "name",
            "display_name",
            "entra_tenant_id",
            "status",
            "quotas",
            "allowed_modules",
            "allowed_targets",
            "created_at",
            "updated_at",
            "erasing_since",
        ),
    )
)
_INSERT = sql.SQL(
    "INSERT INTO app.tenants (name, display_name, entra_tenant_id, status, quotas, allowed_modules, allowed_targets)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {}"
).format(_COLUMNS)
_BY_ID = sql.SQL("SELECT {} FROM app.tenants WHERE id = %s").format(_COLUMNS)
# NO KEY UPDATE: a change never touches the id, name or Entra tenant id, and so need not wait for the row's KEY SHARE
# holders (every insert naming the tenant, an audit record, a writer's look after its upload; an export held it while
# it uploaded until 2026-12-07, and an operator's suspension waited minutes for a big tenant's archive).
_BY_ID_FOR_UPDATE = sql.SQL("SELECT {} FROM app.tenants WHERE id = %s FOR NO KEY UPDATE").format(_COLUMNS)
_MARK_ERASING = sql.SQL(
    "UPDATE app.tenants SET erasing_since = clock_timestamp(), updated_at = clock_timestamp() WHERE id = %s"
    " RETURNING {}"
).format(_COLUMNS)
_BY_ENTRA_ID = sql.SQL("SELECT {} FROM app.tenants WHERE entra_tenant_id = %s").format(_COLUMNS)
_PAGE = sql.SQL(
    "SELECT {} FROM app.tenants WHERE (%(after)s::text IS NULL OR name > %(after)s)"
    " AND (%(status)s::text IS NULL OR status = %(status)s) ORDER BY name LIMIT %(limit)s"
).format(_COLUMNS)
_CHANGEABLE = ("display_name", "status", "quotas", "allowed_modules", "allowed_targets")
_UPDATE = sql.SQL(
    "UPDATE app.tenants SET display_name = %s, status = %s, quotas = %s, allowed_modules = %s,"
    " allowed_targets = %s, updated_at = clock_timestamp() WHERE id = %s RETURNING {}"
).format(_COLUMNS)


class TenantConflictError(Exception):
    """The name or the Entra tenant id is already provisioned."""


def _to_tenant(row: dict[str, Any]) -> Tenant:
    return Tenant(**{**row, "quotas": stored_quotas(row["id"], row["quotas"])})


def stored_quotas(tenant_id: UUID, stored: Any) -> TenantQuotas:
    """The quotas a tenant's row holds, each one that is not a whole number in its bounds (a hand edit, another
    writer: the API stores none) left out, with a warning, so the platform's default applies: a bad quota must not
    take its tenant offline, nor the operators' listing of tenants with it."""
    kept: dict[str, int] = {}
    for name, value in (stored if isinstance(stored, dict) else {}).items():
        try:
            kept[name] = TenantQuotas.model_validate({name: value}).model_dump()[name]
        except ValidationError:
            logger.warning("tenant %s: its stored quota %r is not valid; the default applies", tenant_id, name)
    return TenantQuotas.model_validate(kept)


def etag(tenant: Tenant) -> str:
    """A strong validator that changes with every update of the row."""
    digest = hashlib.sha256(f"{tenant.id}:{tenant.updated_at.isoformat()}".encode()).hexdigest()[:20]
    return f'"{digest}"'


def create_tenant(conn: psycopg.Connection[DictRow], spec: TenantCreate) -> Tenant:
    """Insert a tenant; a taken name or Entra tenant id is a TenantConflictError."""
    try:
        with conn.transaction():  # a savepoint, so a conflict leaves the caller's transaction usable
            row = conn.execute(
                _INSERT,
                (
                    spec.name,
                    spec.display_name,
                    spec.entra_tenant_id,
                    spec.status,
                    Jsonb(spec.quotas.model_dump(exclude_none=True)),
                    list(dict.fromkeys(spec.allowed_modules)),
                    list(dict.fromkeys(spec.allowed_targets)),
                ),
            ).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        raise TenantConflictError("a tenant with this name or Entra tenant id exists") from exc
    assert row is not None  # INSERT ... RETURNING returns the row
    return _to_tenant(row)


def tenant_settings(conn: psycopg.Connection[DictRow]) -> dict[str, Any]:
    """The current tenant's own settings document, read in its tenant transaction (RLS: its row only)."""
    row = conn.execute("SELECT settings FROM app.tenants").fetchone()
    return dict(row["settings"]) if row else {}


_OWN = "SELECT name, display_name, status, quotas, allowed_modules, allowed_targets, settings, version FROM app.tenants"
# The bound is checked in the UPDATE itself, on the row it changes: a concurrent merge waits for the row lock and then
# re-evaluates the condition on the committed document (READ COMMITTED), so two merges that each fit alone cannot
# overshoot together. A document over the bound already (written before it) may still change without growing. The
# versions an If-Match names are compared the same way: of two merges sent with one ETag, the second finds the row at
# the version the first made (migration 0052) and changes nothing. A merge that changes nothing (its keys already
# hold those values, as JSON text) keeps `updated_at`, and so the row as it was: the version trigger, which fires
# only on a row that differs, leaves the ETag. The row is still written, for the comparisons above to be made on it.
_MERGE_OWN_SETTINGS = (
    "UPDATE app.tenants SET settings = settings || %(change)s,"
    " updated_at = CASE WHEN (settings || %(change)s)::text IS DISTINCT FROM settings::text"
    "   THEN clock_timestamp() ELSE updated_at END"
    " WHERE (%(versions)s::bigint[] IS NULL OR version = ANY (%(versions)s))"
    " AND ((SELECT count(*) FROM jsonb_object_keys(settings || %(change)s)) <= %(max_keys)s"
    "        OR (SELECT count(*) FROM jsonb_object_keys(settings || %(change)s))"
    "           <= (SELECT count(*) FROM jsonb_object_keys(settings)))"
    " AND (octet_length((settings || %(change)s)::text) <= %(max_bytes)s"
    "      OR octet_length((settings || %(change)s)::text) <= octet_length(settings::text))"
)
_MEASURE_MERGED = (
    "SELECT (SELECT count(*) FROM jsonb_object_keys(settings || %(change)s)) AS keys,"
    " octet_length((settings || %(change)s)::text) AS bytes, version FROM app.tenants"
)
# A version as an ETag names it; at most 18 digits, so that any it names fits a bigint.


def own_tenant(conn: psycopg.Connection[DictRow]) -> dict[str, Any]:
    """The current tenant as its own admin sees it (limits, allow-lists, settings) and the `version` its ETag names,
    in its tenant transaction."""
    row = conn.execute(_OWN).fetchone()  # RLS: exactly the transaction's tenant's row
    assert row is not None  # a tenant transaction is pinned to an existing tenant
    return dict(row)


def settings_etag(version: int) -> str:
    """The strong ETag of the tenant's settings at `version` (of its row, migration 0052)."""
    return etags.versioned("tenant", version)


def settings_versions(if_match: frozenset[str]) -> list[int]:
    """The versions the ETags in `if_match` name: weak ones and any not `settings_etag` made name none."""
    return etags.versions_named("tenant", if_match)


class SettingsPreconditionFailedError(Exception):
    """If-Match named none of the versions the tenant's settings are at: they changed since that ETag was issued."""


class SettingsTooLargeError(Exception):
    """A merge would leave the tenant's settings past `MAX_SETTINGS_KEYS` keys or `MAX_SETTINGS_BYTES` bytes."""

    def __init__(self, keys: int, size: int) -> None:
        super().__init__(
            f"The merged settings would hold {keys} keys and {size} bytes as JSON; a tenant's settings hold at most"
            f" {MAX_SETTINGS_KEYS} keys and {MAX_SETTINGS_BYTES} bytes."
        )
        self.keys, self.size = keys, size


def merge_own_settings(
    conn: psycopg.Connection[DictRow], settings: dict[str, Any], *, if_match: frozenset[str] | None = None
) -> None:
    """Merge `settings` into the current tenant's own settings (top-level keys replaced), in its transaction, if
    `if_match` (None: any version) names the version they are at. Raises, changing nothing,
    SettingsPreconditionFailedError when it does not, SettingsTooLargeError when the merged document would grow past
    the bound."""
    versions = None if if_match is None else settings_versions(if_match)
    bound = {
        "change": Jsonb(settings),
        "max_keys": MAX_SETTINGS_KEYS,
        "max_bytes": MAX_SETTINGS_BYTES,
        "versions": versions,
    }
    if conn.execute(_MERGE_OWN_SETTINGS, bound).rowcount == 0:  # RLS: the one row is this tenant's
        # Read after the UPDATE, as it read the row: a merge it waited for is seen (READ COMMITTED).
        measured = conn.execute(_MEASURE_MERGED, bound).fetchone()
        assert measured is not None  # a tenant transaction is pinned to an existing tenant
        if versions is not None and measured["version"] not in versions:
            raise SettingsPreconditionFailedError
        raise SettingsTooLargeError(int(measured["keys"]), int(measured["bytes"]))


_HOLD = "SELECT 1 FROM app.tenants WHERE id = %s FOR KEY SHARE"

ROW_LOCK_WAIT_MS = 2000
"""How long a control-plane request waits for the tenant row's lock (`briefly_waited`) before it is refused: the row's
changes (a PATCH, an erasure's mark) hold it for milliseconds, an erasure's last transaction for a moment."""


class TenantRowBusyError(RuntimeError):
    """The tenant row's lock was not had within ROW_LOCK_WAIT_MS (an erasure's last transaction holds it, or another
    change of the row): the caller's transaction is back where it was before the block (`briefly_waited`), and the
    request is refused rather than held (`erasure_under_way` tells which refusal)."""


@contextmanager
def briefly_waited(conn: psycopg.Connection[DictRow], wait_ms: int | None = None) -> Iterator[None]:
    """Within the block, the statements of `conn`'s transaction wait at most `wait_ms` (ROW_LOCK_WAIT_MS) for a lock,
    then TenantRowBusyError; the transaction's own lock_timeout is back after it.

    Each request that waited on the tenant row held one of the control plane's few connections (shared/db/pool.py)
    while it waited, and with them all taken every tenant's token lookup failed (503)."""
    wait = ROW_LOCK_WAIT_MS if wait_ms is None else wait_ms
    before = conn.execute("SELECT pg_catalog.current_setting('lock_timeout') AS lock_timeout").fetchone()
    assert before is not None
    try:
        # A savepoint (the statement above began the transaction): a lock not had rolls back to it, and the caller's
        # transaction can still look at why (`erasure_under_way`) without a second connection of the small pool.
        with conn.transaction():
            conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (f"{int(wait)}ms",))
            yield
            conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (before["lock_timeout"],))
    except psycopg.errors.LockNotAvailable as exc:
        raise TenantRowBusyError(str(exc)) from None


_ERASURE_UNDER_WAY = (
    "SELECT EXISTS (SELECT 1 FROM app.tenants WHERE id = %s AND erasing_since IS NOT NULL)"
    " OR EXISTS (SELECT 1 FROM control.tenant_erasures WHERE tenant_id = %s) AS under_way"
)


def erasure_under_way(conn: psycopg.Connection[DictRow], tenant_id: UUID) -> bool:
    """Whether the tenant is marked for erasure or an erasure holds its lease (migration 0078), read without a lock:
    after TenantRowBusyError, whether the row is held by its erasure (409 `erasure-in-progress`) or by anything else,
    a change or an administrator (503, sent again shortly): an active tenant's change was answered that an erasure of
    it was running."""
    row = conn.execute(_ERASURE_UNDER_WAY, (tenant_id, tenant_id)).fetchone()
    return bool(row and row["under_way"])


def hold_tenant(conn: psycopg.Connection[DictRow], tenant_id: UUID) -> bool:
    """Keep the tenant row from being deleted until `conn` commits (its erasure waits); False when it is gone."""
    return conn.execute(_HOLD, (tenant_id,)).fetchone() is not None


def get_tenant(conn: psycopg.Connection[DictRow], tenant_id: UUID, *, for_update: bool = False) -> Tenant | None:
    """One tenant by its platform id; `for_update`: its row held until the transaction ends, so that a check of it
    (an If-Match) still holds when the change is written."""
    row = conn.execute(_BY_ID_FOR_UPDATE if for_update else _BY_ID, (tenant_id,)).fetchone()
    return _to_tenant(row) if row else None


def mark_erasing(
    conn: psycopg.Connection[DictRow], tenant_id: UUID, *, on_marked: Callable[[Tenant], None] | None = None
) -> Tenant | None:
    """Mark a suspended tenant as being erased (`erasing_since`, kept when set already), its row held until `conn`
    commits; returns the tenant as it now is (unmarked when it is not suspended), or None when it does not exist.
    `on_marked` gets the tenant as this call marks it (not when it was marked already), in `conn`. TenantRowBusyError
    when the row's lock is not had within ROW_LOCK_WAIT_MS."""
    # NO KEY UPDATE, as a control-plane change takes it: a change waits for the mark's commit and then sees it (or the
    # mark waits for the change, and sees its status). FOR UPDATE also waited for every writer of the tenant holding
    # the row's KEY SHARE, which changes no status; the row deletion's FOR UPDATE waits for them later. Waited for
    # briefly (TenantRowBusyError past it): an erasure's last transaction holds the row, and a mark sent again meanwhile
    # held a connection of the control plane's small pool as long.
    with briefly_waited(conn):
        row = conn.execute(_BY_ID_FOR_UPDATE, (tenant_id,)).fetchone()
    if row is None:
        return None
    tenant = _to_tenant(row)
    if tenant.status != "suspended" or tenant.erasing_since is not None:
        return tenant
    row = conn.execute(_MARK_ERASING, (tenant_id,)).fetchone()
    assert row is not None  # the row is locked above
    marked = _to_tenant(row)
    if on_marked is not None:
        on_marked(marked)
    return marked


def list_tenants(
    conn: psycopg.Connection[DictRow], *, limit: int, after_name: str | None, status: str | None
) -> TenantPage:
    """Tenants ordered by name, after `after_name` (keyset pagination)."""
    rows = conn.execute(
        _PAGE,
        {"after": after_name, "status": status, "limit": limit + 1},
    ).fetchall()
    items = [_to_tenant(r) for r in rows[:limit]]
    next_cursor = encode_cursor({"name": items[-1].name}) if len(rows) > limit else None
    return TenantPage(items=items, next_cursor=next_cursor)


def update_tenant(conn: psycopg.Connection[DictRow], tenant_id: UUID, change: TenantUpdate) -> Tenant | None:
    """Apply a partial update; returns the new row, or None when the tenant does not exist."""
    fields = change.model_dump(exclude_unset=True)
    current = conn.execute(_BY_ID_FOR_UPDATE, (tenant_id,)).fetchone()
    if current is None:
        return None
    merged = {**current, **{k: v for k, v in fields.items() if v is not None}}
    if "quotas" in fields and fields["quotas"] is not None:
        # JSON merge semantics: a quota sent as null is removed (the platform default applies again).
        sent = change.quotas.model_dump(exclude_unset=True)  # type: ignore[union-attr]
        merged["quotas"] = {k: v for k, v in {**current["quotas"], **sent}.items() if v is not None}
    changed = (
        merged["display_name"],
        merged["status"],
        merged["quotas"],
        list(dict.fromkeys(merged["allowed_modules"])),
        list(dict.fromkeys(merged["allowed_targets"])),
    )
    if changed == tuple(current[column] for column in _CHANGEABLE):
        # A change that changes nothing keeps the row, so its `updated_at` and the ETags made from it (ADR 0045).
        return _to_tenant(current)
    display_name, status, quotas, allowed_modules, allowed_targets = changed
    row = conn.execute(
        _UPDATE, (display_name, status, Jsonb(quotas), allowed_modules, allowed_targets, tenant_id)
    ).fetchone()
    assert row is not None  # the row is locked above
    return _to_tenant(row)


class _Read:
    """One read of a tenant by its Entra tenant id, whose outcome its waiters share."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.done = threading.Event()
        self.tenant: Tenant | None = None
        self.error: BaseException | None = None


class TenantDirectory:
    """Resolve an Entra tenant id to its provisioned tenant, cached briefly to keep every request cheap.

    A short TTL bounds how long a suspension takes to bite; the control plane clears the cache on change.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: float = 5.0) -> None:
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[UUID, tuple[float, Tenant | None]] = {}
        # One read per Entra tenant at a time: the tenant's requests and open streams that find its answer expired
        # together share that read's outcome instead of each taking a connection of the pool for the same row.
        self._reading: dict[UUID, _Read] = {}
        self._generation = 0

    def resolve(self, conn_factory: Any, entra_tenant_id: UUID) -> Tenant | None:
        """The tenant whose Entra tenant id this is, or None when it is not provisioned."""
        known, tenant = self.cached(entra_tenant_id)
        if known:
            return tenant
        while True:
            with self._lock:
                read = self._reading.get(entra_tenant_id)
                # A read begun before the cache was last cleared (a suspension) may answer what changed: not joined.
                leads = read is None or read.generation != self._generation
                if leads:
                    read = self._reading[entra_tenant_id] = _Read(self._generation)
            assert read is not None
            if leads:
                break
            # The read's outcome: a failed one (the pool exhausted) repeated by each waiter in turn made the k-th wait
            # k reads. A leader ended by something other than an error (its thread stopping) leaves the read to them.
            read.done.wait()
            if isinstance(read.error, Exception):
                raise read.error
            if read.error is None:
                return read.tenant
        try:
            now = time.monotonic()
            with conn_factory() as conn:
                row = conn.execute(_BY_ENTRA_ID, (entra_tenant_id,)).fetchone()
            read.tenant = _to_tenant(row) if row else None
            with self._lock:
                # Not kept when the cache was cleared while it was read (a suspension): it may be older than that.
                if read.generation == self._generation:
                    self._cache[entra_tenant_id] = (now, read.tenant)
                    if len(self._cache) > self.MAX_ENTRIES:
                        self._trim(now)
        except BaseException as exc:
            read.error = exc
            raise
        finally:
            with self._lock:
                if self._reading.get(entra_tenant_id) is read:
                    del self._reading[entra_tenant_id]
            read.done.set()
        return read.tenant

    def _trim(self, now: float) -> None:
        # Every Entra tenant with a validly signed token leaves an entry, unprovisioned ones too: answers past
        # their TTL go first, then the oldest, so the cache stays bounded whatever tenants call.
        self._cache = {key: hit for key, hit in self._cache.items() if now - hit[0] < self._ttl}
        while len(self._cache) > self.MAX_ENTRIES:
            del self._cache[next(iter(self._cache))]

    def cached(self, entra_tenant_id: UUID) -> tuple[bool, Tenant | None]:
        """(True, what `resolve` would answer) while a fresh answer is cached, else (False, None): no I/O."""
        with self._lock:
            hit = self._cache.get(entra_tenant_id)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return True, hit[1]
        return False, None

    def forget(self) -> None:
        """Drop every cached entry (after a tenant changes)."""
        with self._lock:
            self._cache.clear()
            self._generation += 1


tenant_directory = TenantDirectory()
