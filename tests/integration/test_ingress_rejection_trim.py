# intent_ref: platform.ingress
"""A tenant's record of rejected intent-requests events stays bounded on the real database: each new row trims its
sender's oldest beyond the kept count (never another principal's: the unknown sender's rows are a group of their own),
the tenant's beyond its own bound by each principal's deepest first, and any past the retention, never another
tenant's; the app itself can delete nothing but by that rule (migrations 0026, 0063)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.accepted_json import NotAcceptedJSONError
from shared.db import tenant_locks
from shared.db.migrate import APP_MIGRATIONS, discover
from shared.db.session import allow_nested_borrow, runtime_transaction, tenant_transaction
from shared.ingress.rejecting import Rejected, invalid_body, not_accepted, stale
from shared.ingress.rejections import NewRejection, list_rejections, record_rejection, recorded_reason

pytestmark = pytest.mark.integration

_FLOOR = 100  # what the database keeps of a principal whatever a caller asks
_TENANT_FLOOR = 1000  # and of a tenant in all
_SLACK = _TENANT_FLOOR // 10  # how far past its bound a tenant's full rows go before they are trimmed back to it


def _rejection(sequence_number: int, principal: str | None = None) -> NewRejection:
    return NewRejection(
        hub="intent-requests",
        partition_id="0",
        sequence_number=sequence_number,
        enqueued_time=None,
        reason="invalid_request",
        detail={"type": "about:blank", "title": "Invalid", "status": 422},
        requested_by=principal,
    )


def _record(
    pool: ConnectionPool[Any], tenant: uuid.UUID, first: int, count: int, principal: str | None = None, **trim: Any
) -> list[bool]:
    recorded = []
    for sequence_number in range(first, first + count):
        with tenant_transaction(tenant, pool=pool) as conn:
            recorded.append(record_rejection(conn, _rejection(sequence_number, principal), **trim))
    return recorded


def _sequence_numbers(pool: ConnectionPool[Any], tenant: uuid.UUID, principal: str | None = None) -> list[int]:
    """The tenant's rejections newest first; those of `principal` only when one is named."""
    with tenant_transaction(tenant, pool=pool) as conn:
        page, _ = list_rejections(conn, limit=100_000)
    return [r.sequence_number for r in page if principal is None or r.requested_by == principal]


def _by_principal(pool: ConnectionPool[Any], tenant: uuid.UUID) -> dict[str | None, list[int]]:
    """The tenant's rejections by sender, each newest first."""
    with tenant_transaction(tenant, pool=pool) as conn:
        page, _ = list_rejections(conn, limit=100_000)
    groups: dict[str | None, list[int]] = {}
    for rejection in page:
        groups.setdefault(rejection.requested_by, []).append(rejection.sequence_number)
    return groups


def _seed(pg: Any, tenant: uuid.UUID, principal: str | None, first: int, count: int) -> None:
    """`count` older rejections of `principal` at once (as the database's owner: faster than one event at a time),
    sequence numbers from `first`, the higher the newer, all older than anything recorded afterwards."""
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute(
            "INSERT INTO app.ingress_rejections (tenant_id, hub, partition_id, sequence_number, reason, detail,"
            " requested_by, created_at)"
            " SELECT %s, 'intent-requests', '0', n, 'invalid_request', '{}'::jsonb, %s,"
            "        now() - interval '1 hour' + n * interval '1 millisecond'"
            " FROM generate_series(%s::bigint, %s::bigint) AS n",
            (tenant, principal, first, first + count - 1),
        )


def test_a_tenant_keeps_its_newest_rejections_and_no_other_tenant_is_trimmed(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    flooding, quiet = new_tenant(), new_tenant()
    _record(app_pool, quiet, 0, 5, keep=_FLOOR)
    _record(app_pool, flooding, 0, _FLOOR + 30, keep=_FLOOR)
    # The newest 100 of the flooding tenant, newest first; the quiet tenant's five untouched.
    assert _sequence_numbers(app_pool, flooding) == list(range(_FLOOR + 29, 29, -1))
    assert _sequence_numbers(app_pool, quiet) == [4, 3, 2, 1, 0]


def test_a_principals_flood_evicts_its_own_oldest_and_no_other_principals_rejection(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _record(app_pool, tenant, 0, 5, "victim", keep=_FLOOR)
    _record(app_pool, tenant, 5, 3, None, keep=_FLOOR)  # events whose sender is not known
    # A Reader's events are all refused, yet each is recorded: it sends more than the record keeps.
    _record(app_pool, tenant, 1000, _FLOOR + 30, "reader", keep=_FLOOR)
    # The tenant-wide trim of migration 0026 kept the tenant's newest 100: the reader's alone, the others' erased.
    assert _sequence_numbers(app_pool, tenant, "victim") == [4, 3, 2, 1, 0]
    assert _by_principal(app_pool, tenant)[None] == [7, 6, 5]
    # The reader's own oldest 30 went.
    assert _sequence_numbers(app_pool, tenant, "reader") == list(range(1000 + _FLOOR + 29, 1029, -1))


def test_the_unknown_senders_rejections_are_a_group_of_their_own(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _record(app_pool, tenant, 0, 4, "principal", keep=_FLOOR)
    _record(app_pool, tenant, 100, _FLOOR + 10, None, keep=_FLOOR)
    groups = _by_principal(app_pool, tenant)
    assert groups[None] == list(range(100 + _FLOOR + 9, 109, -1))  # the unknown sender's newest 100
    assert groups["principal"] == [3, 2, 1, 0]
    # A principal's flood takes none of the unknown sender's either.
    _record(app_pool, tenant, 1000, _FLOOR + 5, "principal", keep=_FLOOR)
    groups = _by_principal(app_pool, tenant)
    assert groups[None] == list(range(100 + _FLOOR + 9, 109, -1))
    assert groups["principal"] == list(range(1000 + _FLOOR + 4, 1004, -1))


def test_the_tenant_is_bounded_as_a_whole_and_each_principal_keeps_its_share(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = new_tenant(), new_tenant()
    # Eleven principals hold 100 each: the tenant's bound and its slack (the call below asks for less: the floors
    # hold), so the next rejection takes the tenant past them and back to its bound.
    principals = [f"p{n}" for n in range(11)]
    for n, principal in enumerate(principals):
        _seed(pg, tenant, principal, n * 1000, _FLOOR)
    _seed(pg, other, "p0", 0, _TENANT_FLOOR + _SLACK + 50)  # another tenant over the bound: not this tenant's to trim
    assert _record(app_pool, tenant, 50_000, 1, "flooder", keep=0, tenant_keep=0) == [True]
    groups = _by_principal(app_pool, tenant)
    assert sum(len(kept) for kept in groups.values()) == _TENANT_FLOOR
    # A twelfth principal's rejection takes from each of the others only what it holds beyond a twelfth of the bound
    # (83 of 1,000), and only its oldest.
    share = _TENANT_FLOOR // (len(principals) + 1)
    for n, principal in enumerate(principals):
        kept = groups[principal]
        assert share <= len(kept) <= _FLOOR, principal
        assert kept == list(range(n * 1000 + _FLOOR - 1, n * 1000 + _FLOOR - 1 - len(kept), -1)), principal
    assert groups["flooder"] == [50_000]
    # Its flood then grows its own rows to its kept count, the tenant's to no more than its bound and slack: the
    # tenant is ranked again only once past them (it was at every rejection, each of the others losing a row).
    _record(app_pool, tenant, 50_001, _FLOOR + 29, "flooder", keep=0, tenant_keep=0)
    after = _by_principal(app_pool, tenant)
    assert sum(len(kept) for kept in after.values()) <= _TENANT_FLOOR + _SLACK
    assert {principal: after[principal] for principal in principals} == {p: groups[p] for p in principals}
    groups = after
    assert groups["flooder"] == list(range(50_000 + _FLOOR + 29, 50_029, -1))
    assert all(len(groups[principal]) >= share for principal in principals)
    assert len(_sequence_numbers(app_pool, other)) == _TENANT_FLOOR + _SLACK + 50


def test_a_principals_flood_takes_nothing_of_others_while_the_tenant_is_within_its_bound(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    for n in range(9):
        _seed(pg, tenant, f"p{n}", n * 1000, _FLOOR)
    _record(app_pool, tenant, 50_000, _FLOOR + 30, "flooder", keep=_FLOOR, tenant_keep=_TENANT_FLOOR)
    groups = _by_principal(app_pool, tenant)
    assert all(len(groups[f"p{n}"]) == _FLOOR for n in range(9))
    assert groups["flooder"] == list(range(50_000 + _FLOOR + 29, 50_029, -1))


def test_the_trim_the_release_still_running_calls_evicts_no_other_principals_rejection(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _seed(pg, tenant, "victim", 0, 5)
    _seed(pg, tenant, "reader", 100, _TENANT_FLOOR + 100)
    # The two-argument trim (which the release before this one calls while the new one is swapped in) kept the
    # tenant's newest 100 here, the reader's alone; now it applies the tenant's bound only.
    with tenant_transaction(tenant, pool=app_pool) as conn:
        removed = conn.execute("SELECT app.trim_ingress_rejections(100, interval '30 days') AS n").fetchone()
    assert removed == {"n": 105}  # down to the tenant's bound (ten times the kept count): the reader's oldest
    groups = _by_principal(app_pool, tenant)
    assert groups["victim"] == [4, 3, 2, 1, 0]
    assert groups["reader"] == list(range(100 + _TENANT_FLOOR + 99, 100 + 104, -1))


def test_a_redelivered_event_trims_nothing(app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]) -> None:
    tenant = new_tenant()
    assert _record(app_pool, tenant, 0, _FLOOR, keep=_FLOOR) == [True] * _FLOOR
    assert _record(app_pool, tenant, 0, 1, keep=_FLOOR) == [False]  # the oldest again: recorded once, kept
    assert len(_sequence_numbers(app_pool, tenant)) == _FLOOR
    assert _sequence_numbers(app_pool, tenant)[-1] == 0


def test_rejections_past_the_retention_go_at_the_tenants_next_rejection(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = new_tenant(), new_tenant()
    _record(app_pool, tenant, 0, 3)
    _record(app_pool, other, 0, 3)
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute(
            "UPDATE app.ingress_rejections SET created_at = now() - interval '31 days'"
            " WHERE tenant_id = ANY(%s) AND sequence_number < 2",
            ([tenant, other],),
        )
    _record(app_pool, tenant, 3, 1, retention=timedelta(days=30))
    assert _sequence_numbers(app_pool, tenant) == [3, 2]
    # Another tenant's old rows wait for its own next rejection.
    assert sorted(_sequence_numbers(app_pool, other)) == [0, 1, 2]


def test_no_caller_can_trim_below_the_floors(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _record(app_pool, tenant, 0, _FLOOR + 5, keep=_FLOOR)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        removed = conn.execute("SELECT app.trim_ingress_rejections(NULL, 0, 0, interval '0 seconds') AS n").fetchone()
    # keep 0 and age 0 ask for everything; the floors keep 100 of a principal, 1,000 of the tenant and a day's worth
    assert removed == {"n": 0}
    assert len(_sequence_numbers(app_pool, tenant)) == _FLOOR


def test_the_app_deletes_no_rejection_itself_and_trims_nothing_without_a_tenant(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _record(app_pool, tenant, 0, 2)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            conn.execute("DELETE FROM app.ingress_rejections")
    with runtime_transaction(pool=app_pool) as conn:
        removed = conn.execute("SELECT app.trim_ingress_rejections(NULL, 100, 1000, interval '1 day') AS n").fetchone()
    assert removed == {"n": 0}
    assert _sequence_numbers(app_pool, tenant) == [1, 0]


def _rows(pg: Any, tenant: uuid.UUID) -> dict[int, tuple[bool, dict[str, Any]]]:
    """Every row of the tenant, full or marker, by sequence number: whether it is a marker, and its document."""
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        found = admin.execute(
            "SELECT sequence_number, trimmed, detail FROM app.ingress_rejections WHERE tenant_id = %s", (tenant,)
        ).fetchall()
    return {row[0]: (row[1], row[2]) for row in found}


def _age(pg: Any, tenant: uuid.UUID, below: int, age: str) -> None:
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute(
            "UPDATE app.ingress_rejections SET created_at = created_at - %s::interval"
            " WHERE tenant_id = %s AND sequence_number < %s",
            (age, tenant, below),
        )


def test_a_row_its_event_may_still_start_is_trimmed_to_a_marker_and_an_older_one_deleted(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _seed(pg, tenant, "sender", 0, 10)
    _age(pg, tenant, 5, "2 days")  # 0-4 recorded before the redelivery window, 5-9 within it
    _record(app_pool, tenant, 100, _FLOOR, "sender", keep=_FLOOR)
    rows = _rows(pg, tenant)
    # Beyond the sender's newest 100: the old ones deleted; the young ones kept as markers, their events still final.
    assert sorted(n for n in rows if n < 100) == [5, 6, 7, 8, 9]
    assert all(rows[n] == (True, {}) for n in range(5, 10))
    assert all(not rows[n][0] for n in range(100, 100 + _FLOOR))
    assert _sequence_numbers(app_pool, tenant) == list(range(100 + _FLOOR - 1, 99, -1))  # markers are not listed
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert recorded_reason(conn, "intent-requests", "0", 7, None) == "invalid_request"
    # Once past the window, the markers go at the tenant's next rejection.
    _age(pg, tenant, 10, "1 day 2 hours")
    _record(app_pool, tenant, 1000, 1, "sender", keep=_FLOOR)
    assert not [n for n in _rows(pg, tenant) if n < 100]


def _refused(sequence_number: int, refusal: Rejected, principal: str = "flooder") -> NewRejection:
    return NewRejection(
        hub="intent-requests",
        partition_id="2",
        sequence_number=sequence_number,
        enqueued_time=None,
        reason=refusal.reason,
        detail=refusal.document(f"intent-requests/{sequence_number}"),
        requested_by=principal,
        idempotency_key=f"k-{sequence_number}",
    )


def _markers(pg: Any, tenant: uuid.UUID) -> list[tuple[Any, ...]]:
    """The tenant's markers, oldest first: sequence number, principal, key, document."""
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        return admin.execute(
            "SELECT sequence_number, requested_by, idempotency_key, detail FROM app.ingress_rejections"
            " WHERE tenant_id = %s AND trimmed ORDER BY created_at, id",
            (tenant,),
        ).fetchall()


def test_a_burst_of_bodies_refused_as_sent_leaves_no_markers(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # Every row beyond the sender's newest was kept as a marker for 25 h, whatever its reason: a flood of invalid
    # bodies (the cheapest event) grew the table by one marker per event. A body that is not a request, and a stale
    # event, are refused the same way on every delivery: their rows go as before.
    tenant = new_tenant()
    refusals = [
        invalid_body(ValueError("not an object")),
        not_accepted(NotAcceptedJSONError([])),
        stale(ValueError("enqueued too long ago")),
    ]
    for n in range(_FLOOR + 30):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            assert record_rejection(conn, _refused(n, refusals[n % 3]), keep=_FLOOR)
    assert _markers(pg, tenant) == []
    assert _sequence_numbers(app_pool, tenant) == list(range(_FLOOR + 29, 29, -1))
    # A refusal whose cause can go away (quota freed) is still kept as a marker beyond the count.
    quota = Rejected("quota_exceeded", 429, "execution-quota", "Too many requests", "at its quota")
    for n in range(1000, 1000 + _FLOOR + 1):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            assert record_rejection(conn, _refused(n, quota), keep=_FLOOR)
    assert [row[0] for row in _markers(pg, tenant)] == [1000]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert recorded_reason(conn, "intent-requests", "2", 1000, None) == "quota_exceeded"


def test_a_tenants_markers_stop_at_its_bound_the_oldest_going_first(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # Markers had no bound: 200,000 rejections of one sender within 25 h left 199,000 of them.
    tenant = new_tenant()
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute(
            "INSERT INTO app.ingress_rejections (tenant_id, hub, partition_id, sequence_number, reason, detail,"
            " trimmed, created_at)"
            " SELECT %s, 'intent-requests', '9', n, 'quota_exceeded', '{}'::jsonb, true,"
            "        now() - interval '2 hours' + n * interval '1 millisecond'"
            " FROM generate_series(0, %s) AS n",
            (tenant, _TENANT_FLOOR - 1),
        )
    _seed(pg, tenant, "sender", 10_000, _FLOOR)
    _record(app_pool, tenant, 20_000, 5, "sender", keep=_FLOOR, tenant_keep=_TENANT_FLOOR)
    markers = _markers(pg, tenant)
    assert len(markers) == _TENANT_FLOOR
    # The five oldest seeded markers went; the five rows trimmed now are the newest markers.
    assert [row[0] for row in markers[:2]] == [5, 6]
    assert [row[0] for row in markers[-5:]] == list(range(10_000, 10_005))
    assert len(_sequence_numbers(app_pool, tenant)) == _FLOOR


def test_the_listing_shows_full_rows_whole_and_markers_hold_only_what_the_lookup_reads(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # A marker kept its principal and key (the principal in every index of it, one of them of migration 0063's): a
    # few hundred bytes and more per marker, none of which the lookup reads.
    tenant = new_tenant()
    quota = Rejected(
        "quota_exceeded", 429, "execution-quota", "Too many requests", "at its quota", extensions={"limit": 1}
    )
    for n in range(_FLOOR + 10):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            assert record_rejection(conn, _refused(n, quota, principal="p" if n % 2 else "q"), keep=_FLOOR)
    for n in range(_FLOOR + 10, _FLOOR + 70):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            assert record_rejection(conn, _refused(n, quota, principal="q"), keep=_FLOOR)
    markers = _markers(pg, tenant)
    assert markers and all(row[1:] == (None, None, {}) for row in markers)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert all(recorded_reason(conn, "intent-requests", "2", row[0], None) == "quota_exceeded" for row in markers)
        seen, cursor = [], None
        while True:
            page, cursor = list_rejections(conn, cursor=cursor, limit=37)
            seen.extend(page)
            if cursor is None:
                break
    marked = {row[0] for row in markers}
    assert len(marked) == 15  # q's 115 rows beyond its newest 100; p's 55 are all kept
    assert [r.sequence_number for r in seen] == [n for n in range(_FLOOR + 69, -1, -1) if n not in marked]
    for rejection in seen:
        n = rejection.sequence_number
        assert rejection.requested_by == ("p" if n % 2 and n < _FLOOR + 10 else "q")
        assert rejection.idempotency_key == f"k-{n}"
        assert rejection.detail["limit"] == 1 and rejection.detail["instance"] == f"intent-requests/{n}"
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        indexes = {
            row[0]
            for row in admin.execute(
                "SELECT indexname FROM pg_catalog.pg_indexes"
                " WHERE schemaname = 'app' AND tablename = 'ingress_rejections'"
            ).fetchall()
        }
        invalid = admin.execute(
            "SELECT count(*) FROM pg_catalog.pg_index WHERE NOT indisvalid"
            " AND indrelid = 'app.ingress_rejections'::regclass"
        ).fetchone()
    assert "ingress_rejections_tenant_principal_created" not in indexes
    assert {"ingress_rejections_tenant_listed", "ingress_rejections_tenant_markers"} <= indexes
    assert invalid == (0,)


def test_the_markers_indexes_are_built_concurrently_outside_the_alter_tables_lock() -> None:
    # Migration 0079 built its two indexes in its own transaction, under the ACCESS EXCLUSIVE lock of its ALTER
    # TABLE: every read of the table (an ingress start's, under its tenant's start lock) waited for the builds.
    migrations = {m.version: m for m in discover(APP_MIGRATIONS)}
    assert "CREATE INDEX" not in migrations[79].sql_text.upper()
    built = migrations[81]
    assert not built.transactional
    assert all("CONCURRENTLY" in statement for statement in built.statements)


def _seed_refused(pg: Any, tenant: uuid.UUID, principal: str, first: int, count: int, reason: str, age: str) -> None:
    """`count` full rows of `principal` refused for `reason` about `age` ago (the higher the sequence number, the
    newer), on partition 3."""
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute(
            "INSERT INTO app.ingress_rejections (tenant_id, hub, partition_id, sequence_number, reason, detail,"
            " requested_by, created_at)"
            " SELECT %s, 'intent-requests', '3', n, %s, '{}'::jsonb, %s,"
            "        now() - %s::interval + n * interval '1 millisecond'"
            " FROM generate_series(%s::bigint, %s::bigint) AS n",
            (tenant, reason, principal, age, first, first + count - 1),
        )


def _refusal(sequence_number: int, reason: str, principal: str) -> NewRejection:
    return NewRejection(
        hub="intent-requests",
        partition_id="3",
        sequence_number=sequence_number,
        enqueued_time=None,
        reason=reason,
        detail={"type": "about:blank", "title": reason, "status": 403},
        requested_by=principal,
    )


def test_one_senders_flood_of_markers_evicts_no_other_senders_marker(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # Markers lost their principal and the tenant's bound deleted its oldest markers whoever made them: a Reader
    # refused on every event made a marker of each past its own `keep` and evicted the victim's quota marker, whose
    # event then started on its next delivery.
    tenant = new_tenant()
    trim = {"keep": _FLOOR, "tenant_keep": _TENANT_FLOOR}
    _seed_refused(pg, tenant, "victim", 0, _FLOOR, "quota_exceeded", "2 hours")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert record_rejection(conn, _refusal(10_000, "quota_exceeded", "victim"), **trim)
    _seed_refused(pg, tenant, "reader", 20_000, _FLOOR * 11, "forbidden", "1 hour")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert record_rejection(conn, _refusal(30_000, "forbidden", "reader"), **trim)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert recorded_reason(conn, "intent-requests", "3", 0, None) == "quota_exceeded"
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        groups = admin.execute(
            "SELECT reason, count(*), count(DISTINCT marker_group), bool_and(requested_by IS NULL)"
            " FROM app.ingress_rejections WHERE tenant_id = %s AND trimmed GROUP BY reason ORDER BY reason",
            (tenant,),
        ).fetchall()
    # The reader keeps its newest `keep` markers, the victim its one; no principal on either.
    assert groups == [("forbidden", _FLOOR, 1, True), ("quota_exceeded", 1, 1, True)]


def test_the_tenants_marker_bound_goes_deepest_of_each_group_first(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # Eleven senders each past their own bound by 100 markers: the tenant's 1,100 come back to 1,000, the deepest of
    # each sender's going first, so a sender with few markers keeps them all.
    tenant = new_tenant()
    trim = {"keep": _FLOOR, "tenant_keep": _TENANT_FLOOR}
    _seed_refused(pg, tenant, "few", 0, _FLOOR + 5, "quota_exceeded", "3 hours")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert record_rejection(conn, _refusal(900, "quota_exceeded", "few"), **trim)
    for n in range(11):
        _seed_refused(pg, tenant, f"p{n}", 1000 * (n + 1), 2 * _FLOOR - 1, "forbidden", "1 hour")
        with tenant_transaction(tenant, pool=app_pool) as conn:
            assert record_rejection(conn, _refusal(50_000 + n, "forbidden", f"p{n}"), **trim)
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        assert admin.execute(
            "SELECT count(*) FROM app.ingress_rejections WHERE tenant_id = %s AND trimmed", (tenant,)
        ).fetchone() == (_TENANT_FLOOR,)
    # The oldest markers, few's, are the shallowest of their group: kept.
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert all(recorded_reason(conn, "intent-requests", "3", n, None) == "quota_exceeded" for n in range(6))


def test_two_partitions_capping_at_once_leave_the_tenants_bound(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # Two trims capping at once each counted the markers without the other's new one and both deleted the same
    # oldest marker: the tenant kept its bound plus one.
    tenant = new_tenant()
    trim = {"keep": _FLOOR, "tenant_keep": _TENANT_FLOOR}
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute(
            "INSERT INTO app.ingress_rejections (tenant_id, hub, partition_id, sequence_number, reason, detail,"
            " trimmed, created_at)"
            " SELECT %s, 'intent-requests', '9', n, 'quota_exceeded', '{}'::jsonb, true,"
            "        now() - interval '2 hours' + n * interval '1 millisecond'"
            " FROM generate_series(0, %s) AS n",
            (tenant, _TENANT_FLOOR - 1),
        )
    _seed_refused(pg, tenant, "a", 10_000, _FLOOR, "forbidden", "1 hour")
    _seed_refused(pg, tenant, "b", 20_000, _FLOOR, "forbidden", "1 hour")
    backend: list[int] = []
    ready = threading.Event()
    failures: list[BaseException] = []

    def second() -> None:
        try:
            with tenant_transaction(tenant, pool=app_pool) as conn:
                backend.append(conn.info.backend_pid)
                ready.set()
                assert record_rejection(conn, _refusal(40_000, "forbidden", "b"), **trim)
        except BaseException as exc:  # noqa: BLE001  # reported by the test thread
            failures.append(exc)
            ready.set()

    with tenant_transaction(tenant, pool=app_pool) as first:
        assert record_rejection(first, _refusal(30_000, "forbidden", "a"), **trim)
        thread = threading.Thread(target=second)
        thread.start()
        assert ready.wait(30)
        # The second waits for a lock the first holds (the tenant's `ingress-rejections` row, migration 0082;
        # before, the markers' advisory lock, and before that the oldest marker's row).
        with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
            for _ in range(600):
                waiting = admin.execute(
                    "SELECT count(*) FROM pg_catalog.pg_locks WHERE pid = %s AND NOT granted", (backend[0],)
                ).fetchone()
                if waiting and waiting[0]:
                    break
                threading.Event().wait(0.05)
            else:
                pytest.fail("the second trim never waited for the first")
    thread.join(60)
    assert not thread.is_alive() and not failures
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        markers = admin.execute(
            "SELECT count(*) FROM app.ingress_rejections WHERE tenant_id = %s AND trimmed", (tenant,)
        ).fetchone()
    assert markers == (_TENANT_FLOOR,)


def test_fourteen_senders_past_the_tenants_bound_record_at_once_without_a_deadlock(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # Each trim past the tenant's bound ranked all of its full rows and made markers of the deepest, row by row in no
    # shared order, before any lock of the tenant's: fourteen senders recording at once took each other's rows and
    # one of them failed, DeadlockDetected.
    tenant = new_tenant()
    senders = 14
    trim = {"keep": _FLOOR, "tenant_keep": _TENANT_FLOOR}
    for n in range(senders):
        _seed(pg, tenant, f"s{n}", 1000 * n, _FLOOR - 1)
    start = threading.Barrier(senders)
    failures: list[BaseException] = []

    def sender(n: int) -> None:
        try:
            start.wait(30)
            for k in range(20):
                with tenant_transaction(tenant, pool=app_pool) as conn:
                    assert record_rejection(conn, _refusal(100_000 + 100 * n + k, "forbidden", f"s{n}"), **trim)
        except BaseException as exc:  # noqa: BLE001  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        full = admin.execute(
            "SELECT count(*) FROM app.ingress_rejections WHERE tenant_id = %s AND NOT trimmed", (tenant,)
        ).fetchone()
    assert full is not None and full[0] <= _TENANT_FLOOR + _SLACK


def test_no_outside_session_can_hold_up_a_rejection_under_its_tenants_start_lock(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # The markers' bounds were serialised by a transaction advisory lock keyed by the tenant: any session on the app's
    # login could hold it, and a rejection recorded under the tenant's start lock waited for it, the tenant's starts
    # waiting behind until the statement timeout.
    victim, other = new_tenant(), new_tenant()
    trim = {"keep": _FLOOR, "tenant_keep": _TENANT_FLOOR}
    _seed(pg, victim, "victim", 0, _FLOOR)  # its next rejection makes a marker of its oldest
    with psycopg.connect(pg.app_url, autocommit=True) as outsider:
        outsider.execute(
            "SELECT pg_advisory_lock(hashtext('app.ingress_rejections markers'), hashtext(%s::text))", (str(victim),)
        )
        with tenant_transaction(other, pool=app_pool) as foreign:
            # Another tenant's transaction holds its own lock row and cannot see, and so take, the victim's.
            tenant_locks.hold(foreign, "ingress-rejections")
            assert (
                foreign.execute("SELECT 1 FROM app.tenant_locks WHERE tenant_id = %s FOR UPDATE", (victim,)).fetchall()
                == []
            )
            with allow_nested_borrow(), tenant_transaction(victim, pool=app_pool) as conn:
                conn.execute("SET LOCAL lock_timeout = '2s'")  # a wait fails the test instead of hanging it
                tenant_locks.hold(conn, "executions")
                assert record_rejection(conn, _refusal(5_000, "quota_exceeded", "victim"), **trim)
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        markers = admin.execute(
            "SELECT count(*) FROM app.ingress_rejections WHERE tenant_id = %s AND trimmed", (victim,)
        ).fetchone()
    assert markers == (1,)
