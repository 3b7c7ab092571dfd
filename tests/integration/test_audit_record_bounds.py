# intent_ref: platform.audit
"""An audit record's size is the platform's, not the request's (migrations 0072 and 0075, ADR 0012 amended
2026-12-07): a body's name goes into a record only as its model would take it, a new record's detail over the bound is
replaced by a marker with its size and digest (the record is kept), a stored record reads back exactly as stored, a
listing names its keys over as many records as keep each under the bound, and the tables refuse an oversized detail
or document written past the record."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from azure.cosmos import ContainerProxy, DatabaseProxy
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared.accepted_json import INTEGER_OUT_OF_RANGE, NON_FINITE_NUMBER, UNSTORABLE_TEXT
from shared.api import security
from shared.audit import AuditQuery, AuditRecord
from shared.audit import factory as audit_factory
from shared.audit.cosmos import CosmosAuditStore, create_audit_container
from shared.audit.model import DETAIL_CUT, MAX_DETAIL_BYTES, detail_bytes
from shared.audit.postgres import PostgresAuditStore
from shared.db import json_values
from shared.db.migrate import APP_MIGRATIONS
from shared.db.roles import OWNER_ROLE
from shared.db.session import tenant_transaction
from shared.policy.authorizer import Decision, Resource
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = [
    pytest.mark.integration,
    # The Cosmos stand-in serves a self-signed certificate; verification is off for it in tests only.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

MIGRATION = APP_MIGRATIONS / "0072_audit_detail_bounded.sql"
VALIDATION = APP_MIGRATIONS / "0075_audit_detail_bounds_validated.sql"
HUGE_NAME = "é" * 500_000  # a 1 MB body, under the gateway's 1 MiB; 3 MB once the SDK escapes it


def _record(tenant: uuid.UUID, detail: dict[str, Any]) -> AuditRecord:
    return AuditRecord.new(
        tenant_id=tenant,
        principal_id=f"{tenant}/user",
        action="intent.create",
        resource_type="Intent",
        resource_id="an-intent",
        decision="allow",
        detail=detail,
    )


def test_a_detail_past_the_bound_is_replaced_by_a_marker_and_the_record_kept() -> None:
    tenant = uuid.uuid4()
    small = {"name": "web", "version": 3}
    assert _record(tenant, small).detail == small
    # Measured as sent: escaped, each of these takes six bytes, not the two of its UTF-8.
    escaped = {"note": "é" * (MAX_DETAIL_BYTES // 4)}
    assert len(json.dumps(escaped, ensure_ascii=False).encode()) < MAX_DETAIL_BYTES < detail_bytes(escaped)
    for large in (escaped, {"name": "x" * 100_000}):
        record = _record(tenant, large)
        digest = hashlib.sha256(json.dumps(large, ensure_ascii=True, sort_keys=True).encode()).hexdigest()
        assert record.detail == {
            DETAIL_CUT: True,
            "detail_bytes": detail_bytes(large),
            "detail_keys": 1,
            "detail_sha256": digest,
        }
        assert (record.action, record.decision, record.resource_id) == ("intent.create", "allow", "an-intent")
        assert detail_bytes(record.to_public()["detail"]) < 200


@pytest.fixture
def cosmos_audit(cosmos_database: DatabaseProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[ContainerProxy]:
    """The process's audit store is the Cosmos DB one, on a container of this test's."""
    container = create_audit_container(cosmos_database, f"audit-bounds-{uuid.uuid4().hex[:8]}")
    monkeypatch.setattr(audit_factory, "build_audit_store", lambda _settings: CosmosAuditStore(container))
    audit_factory.get_audit_store.cache_clear()
    try:
        yield container
    finally:
        audit_factory.get_audit_store.cache_clear()


def _validate_huge_name_and_read_its_record(api: ApiHarness, tenant: str) -> dict[str, Any]:
    """An Author validates an intent named with a million bytes; the intent.create record it left, read back through
    GET /api/v1/audit."""
    api.provision(tenant)
    response = api.client.post(
        "/api/v1/intents/validate",
        json={"name": HUGE_NAME, "definition": {}},
        headers=api.headers(tenant, ["Intent.Author"]),
    )
    assert response.status_code == 422, response.text[:500]
    page = api.client.get(
        "/api/v1/audit", params={"action": "intent.create"}, headers=api.headers(tenant, ["Tenant.Admin"])
    )
    assert page.status_code == 200, page.text[:500]
    [item] = page.json()["items"]
    return dict(item)


def test_a_huge_name_leaves_a_small_record_in_postgres(api: ApiHarness) -> None:
    item = _validate_huge_name_and_read_its_record(api, "bounds-pg")
    assert item["decision"] == "allow"
    assert item["detail"] == {"operation": "validate", "name_chars": len(HUGE_NAME)}
    [row] = [row for row in api.audit_rows("bounds-pg") if row["action"] == "intent.create"]
    assert row["detail"] == item["detail"]


def test_a_huge_name_leaves_a_small_record_that_cosmos_takes_and_the_trail_shows(
    api: ApiHarness, cosmos_audit: ContainerProxy
) -> None:
    # It went out as a 3 MB document: Cosmos DB refused it for good (413), and the request's record never showed.
    item = _validate_huge_name_and_read_its_record(api, "bounds-cosmos")
    assert item["decision"] == "allow"
    assert item["detail"] == {"operation": "validate", "name_chars": len(HUGE_NAME)}


def test_a_valid_name_still_goes_into_the_record(api: ApiHarness) -> None:
    api.provision("bounds-named")
    api.client.post(
        "/api/v1/intents/validate",
        json={"name": "a-web-app", "definition": {}},
        headers=api.headers("bounds-named", ["Intent.Author"]),
    )
    details = [row["detail"] for row in api.audit_rows("bounds-named") if row["action"] == "intent.create"]
    assert details == [{"operation": "validate", "name": "a-web-app"}]


_BIG = {"blob": "x" * 100_000}  # over both bounds: 64 KiB a detail, 80 KiB a document


def test_the_tables_refuse_an_oversized_detail_written_past_the_record(
    app_pool: Any, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    with pytest.raises(psycopg.errors.CheckViolation, match="audit_events_detail_bounded"):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            conn.execute(
                "INSERT INTO app.audit_events (tenant_id, principal_id, action, resource_type, decision, detail)"
                " VALUES (%s, 'p', 'intent.create', 'Intent', 'allow', %s)",
                (tenant, Jsonb(_BIG)),
            )
    record_id = uuid.uuid4()
    document = {"id": str(record_id), "tenantId": str(tenant), "detail": _BIG}
    with pytest.raises(psycopg.errors.CheckViolation, match="audit_outbox_document_bounded"):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            conn.execute(
                "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)",
                (tenant, record_id, Jsonb(document)),
            )
    # Under the bound, as the record's own cap leaves every detail, both take it.
    with tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute(
            "INSERT INTO app.audit_events (tenant_id, principal_id, action, resource_type, decision, detail)"
            " VALUES (%s, 'p', 'intent.create', 'Intent', 'allow', %s)",
            (tenant, Jsonb({"blob": "x" * MAX_DETAIL_BYTES})),
        )


def _locks(conn: psycopg.Connection[Any]) -> set[tuple[str, str]]:
    """The table locks this transaction holds on the audit tables."""
    rows = conn.execute(
        "SELECT c.relname, l.mode FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c ON c.oid = l.relation"
        " WHERE l.pid = pg_catalog.pg_backend_pid() AND c.relname IN ('audit_events', 'audit_outbox')"
    ).fetchall()
    return {(row["relname"], row["mode"]) for row in rows}


def test_the_migrations_set_a_waiting_oversized_document_aside_intact_and_validate_without_blocking_writes(
    pg: Any, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    big, small = uuid.uuid4(), uuid.uuid4()
    big_detail = {"name": "é" * 100_000}

    def document(record_id: uuid.UUID, detail: dict[str, Any]) -> Jsonb:
        return Jsonb({"id": str(record_id), "tenantId": str(tenant), "action": "intent.create", "detail": detail})

    with psycopg.connect(pg.admin_url, dbname="quantum", row_factory=dict_row) as conn:
        # As a database that had such a record before the migration; all of it rolls back.
        conn.execute("ALTER TABLE app.audit_outbox DROP CONSTRAINT audit_outbox_document_bounded")
        conn.execute("ALTER TABLE app.audit_events DROP CONSTRAINT audit_events_detail_bounded")
        queue = "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)"
        conn.execute(queue, (tenant, big, document(big, big_detail)))
        conn.execute(queue, (tenant, small, document(small, {"name": "web"})))
        # A record of the trail written as large before the migration: kept as it was, the CHECK left NOT VALID.
        conn.execute(
            "INSERT INTO app.audit_events (tenant_id, principal_id, action, resource_type, decision, detail)"
            " VALUES (%s, 'p', 'intent.create', 'Intent', 'allow', %s)",
            (tenant, Jsonb(_BIG)),
        )
        conn.commit()
        try:
            conn.execute(f"SET ROLE {OWNER_ROLE}")
            conn.execute(Path(MIGRATION).read_text().encode())

            def validated() -> list[tuple[str, bool]]:
                rows = conn.execute(
                    "SELECT conname, convalidated FROM pg_catalog.pg_constraint WHERE conname IN"
                    " ('audit_events_detail_bounded', 'audit_outbox_document_bounded') ORDER BY conname"
                ).fetchall()
                return [(row["conname"], row["convalidated"]) for row in rows]

            # 0072 scans nothing under its ACCESS EXCLUSIVE locks: both CHECKs are added NOT VALID.
            assert validated() == [("audit_events_detail_bounded", False), ("audit_outbox_document_bounded", False)]
            conn.commit()
            # 0075, in a transaction of its own, validates under SHARE UPDATE EXCLUSIVE, which writes pass.
            conn.execute(Path(VALIDATION).read_text().encode())
            # (The trail's VALIDATE failed on the old record: its subtransaction, and so its lock, is gone.)
            assert _locks(conn) == {("audit_outbox", "ShareUpdateExclusiveLock")}
            assert validated() == [("audit_events_detail_bounded", False), ("audit_outbox_document_bounded", True)]
            conn.execute("RESET ROLE")
            rows = conn.execute(
                "SELECT id, refused_at IS NOT NULL AS aside, refusal, document -> 'detail' AS detail"
                " FROM app.audit_outbox WHERE id = ANY(%s) ORDER BY id = %s",
                ([big, small], small),
            ).fetchall()
            kept = conn.execute(
                "SELECT count(*) AS n FROM app.audit_events WHERE tenant_id = %s AND detail = %s",
                (tenant, Jsonb(_BIG)),
            ).fetchone()
            conn.rollback()
            # With no such record, 0075 validates the trail's CHECK too, under the same lock.
            conn.execute("RESET ROLE")
            deleted = conn.execute(
                "DELETE FROM app.audit_events WHERE tenant_id = %s AND detail = %s", (tenant, Jsonb(_BIG))
            )
            assert deleted.rowcount == 1
            conn.commit()
            conn.execute(f"SET LOCAL ROLE {OWNER_ROLE}")
            conn.execute(Path(VALIDATION).read_text().encode())
            assert _locks(conn) == {
                ("audit_events", "ShareUpdateExclusiveLock"),
                ("audit_outbox", "ShareUpdateExclusiveLock"),
            }
            assert validated() == [("audit_events_detail_bounded", True), ("audit_outbox_document_bounded", True)]
            conn.rollback()
        finally:
            # Put the database back as the migrations left it: the rows go, the CHECKs stay (as 0072 and 0075 made
            # them, unless the run above failed midway).
            conn.rollback()
            conn.execute("RESET ROLE")
            conn.execute("DELETE FROM app.audit_outbox WHERE id = ANY(%s)", ([big, small],))
            conn.execute("DELETE FROM app.audit_events WHERE tenant_id = %s AND detail = %s", (tenant, Jsonb(_BIG)))
            for table, name, check in (
                ("audit_events", "audit_events_detail_bounded", "pg_catalog.octet_length(detail::text) <= 65536"),
                (
                    "audit_outbox",
                    "audit_outbox_document_bounded",
                    "refused_at IS NOT NULL OR pg_catalog.octet_length(document::text) <= 81920",
                ),
            ):
                conn.execute(f"ALTER TABLE app.{table} DROP CONSTRAINT IF EXISTS {name}")
                conn.execute(f"ALTER TABLE app.{table} ADD CONSTRAINT {name} CHECK ({check})")
            conn.commit()
    assert kept is not None and kept["n"] == 1
    # The oversized waiting document is set aside as it was (its detail the record's only copy), not overwritten.
    assert [(row["id"], row["aside"]) for row in rows] == [(big, True), (small, False)]
    assert rows[0]["detail"] == big_detail and "0072" in rows[0]["refusal"]
    assert rows[1]["detail"] == {"name": "web"}


def test_0072_holds_no_lock_on_the_trail_while_it_works_on_the_outbox(pg: Any) -> None:
    # The trail's ADD CONSTRAINT came first: its ACCESS EXCLUSIVE lock was held through the outbox's policy and
    # set-aside scan, and every request auditing into Postgres waited on it. Here a writer holds the outbox, so the
    # migration stops at its first outbox statement; it must hold nothing on the trail there. Its CHECKs are renamed so
    # they go beside the ones in place; everything rolls back.
    text = (
        Path(MIGRATION)
        .read_text()
        .replace("audit_events_detail_bounded", "audit_events_detail_bounded_probe")
        .replace("audit_outbox_document_bounded", "audit_outbox_document_bounded_probe")
    )
    with (
        psycopg.connect(pg.admin_url, dbname="quantum", row_factory=dict_row) as writer,
        psycopg.connect(pg.admin_url, dbname="quantum", row_factory=dict_row) as migrating,
        psycopg.connect(pg.admin_url, dbname="quantum", row_factory=dict_row, autocommit=True) as watcher,
    ):
        writer.execute("LOCK TABLE app.audit_outbox IN ROW EXCLUSIVE MODE")  # as an INSERT into it holds
        migrating.execute(f"SET ROLE {OWNER_ROLE}")
        pid = migrating.info.backend_pid
        failure: list[BaseException] = []

        def migrate() -> None:
            try:
                migrating.execute(text.encode())
            except BaseException as exc:  # noqa: BLE001  # reported by the test's thread
                failure.append(exc)

        thread = threading.Thread(target=migrate)
        thread.start()
        try:
            locks = "SELECT c.relname, l.mode, l.granted FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c"
            locks += " ON c.oid = l.relation WHERE l.pid = %s AND c.relname IN ('audit_events', 'audit_outbox')"
            held: list[dict[str, Any]] = []
            for _ in range(600):
                held = watcher.execute(locks, (pid,)).fetchall()
                if any(not row["granted"] for row in held) or not thread.is_alive():
                    break
                time.sleep(0.05)
            # Waiting for the outbox, it holds nothing on the trail.
            assert [(row["relname"], row["granted"]) for row in held] == [("audit_outbox", False)]
        finally:
            writer.rollback()
            thread.join()
        assert failure == []
        # Done, both CHECKs are in place, NOT VALID.
        added = migrating.execute(
            "SELECT conname, convalidated FROM pg_catalog.pg_constraint WHERE conname LIKE %s ORDER BY conname",
            ("%_probe",),
        ).fetchall()
        assert [(row["conname"], row["convalidated"]) for row in added] == [
            ("audit_events_detail_bounded_probe", False),
            ("audit_outbox_document_bounded_probe", False),
        ]
        migrating.rollback()


def test_a_stored_record_over_the_bound_reads_back_whole_through_query_and_both_exports(
    app_pool: Any, cosmos_database: DatabaseProxy, new_tenant: Callable[[], uuid.UUID]
) -> None:
    # Written before the bound (20 KB, under the columns' 64 KiB): it read back as the marker, and the Cosmos DB
    # export (the offboarding archive, after which the tenant is erased) lost it for good.
    tenant = new_tenant()
    detail = {"blob": "y" * 20_000}
    record_id = uuid.uuid4()
    with tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute(
            "INSERT INTO app.audit_events (tenant_id, id, principal_id, action, resource_type, decision, detail)"
            " VALUES (%s, %s, 'p', 'intent.create', 'Intent', 'allow', %s)",
            (tenant, record_id, Jsonb(detail)),
        )
    postgres = PostgresAuditStore(pool=app_pool)
    [read] = postgres.query(AuditQuery(tenant_id=tenant)).items
    assert read.id == record_id and read.detail == detail
    assert [row["detail"] for row in postgres.export(tenant)] == [detail]

    container = create_audit_container(cosmos_database, f"audit-read-{uuid.uuid4().hex[:8]}")
    container.create_item(
        {
            "id": str(record_id),
            "tenantId": str(tenant),
            "occurredAt": "2026-12-01T10:00:00.000000Z",
            "principalId": "p",
            "action": "intent.create",
            "resourceType": "Intent",
            "resourceId": None,
            "decision": "allow",
            "reason": "",
            "requestId": None,
            "detail": detail,
        }
    )
    cosmos = CosmosAuditStore(container)
    [read] = cosmos.query(AuditQuery(tenant_id=tenant)).items
    assert read.detail == detail
    assert [row["detail"] for row in cosmos.export(tenant)] == [detail]


def _listed(monkeypatch: pytest.MonkeyPatch, keys: list[str], named: str) -> list[dict[str, Any]]:
    """The details of the records `readable` writes for a listing of `keys`, each allowed, as `AuditRecord.new`
    leaves them."""
    details: list[dict[str, Any]] = []

    def record_decision(*_args: Any, detail: dict[str, Any], **_kwargs: Any) -> None:
        details.append(dict(_record(uuid.uuid4(), detail).detail))

    allow = SimpleNamespace(decide=lambda *_args, **_kwargs: Decision(True, "allowed", ()))
    monkeypatch.setattr(security, "tenant_policy_texts", lambda _tenant: ())
    monkeypatch.setattr(security, "get_authorizer", lambda: allow)
    monkeypatch.setattr(security, "record_decision", record_decision)
    tenant = uuid.uuid4()
    context = SimpleNamespace(tenant=SimpleNamespace(id=tenant), principal=None, tenant_facts=None)
    rows = security.readable(
        context,  # type: ignore[arg-type]  # what readable reads of a context
        "module.read",
        keys,
        lambda key: Resource("Module", key, tenant),
        lambda key: key,
        conn=None,
        named=named,
    )
    assert rows == keys
    return details


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        # GET /api/v1/modules with 100 modules of 128-character actions: 13,356 bytes in one record.
        ([f"{i:03d}." + "a" * 124 for i in range(100)], "items"),
        # GET /api/v1/work?limit=500: about 20 KB of ids.
        ([str(uuid.uuid4()) for _ in range(500)], "items"),
    ],
)
def test_the_largest_listings_name_every_key_over_records_each_under_the_bound(
    monkeypatch: pytest.MonkeyPatch, keys: list[str], named: str
) -> None:
    details = _listed(monkeypatch, keys, named)
    assert len(details) > 1
    assert all(DETAIL_CUT not in detail and detail_bytes(detail) <= MAX_DETAIL_BYTES for detail in details)
    assert [key for detail in details for key in detail[named]] == keys
    assert [(detail["part"], detail["parts"]) for detail in details] == [
        (i, len(details)) for i in range(1, len(details) + 1)
    ]
    assert all(detail["operation"] == "list" for detail in details)
    # A small listing is still one record, as before.
    assert _listed(monkeypatch, keys[:3], named) == [{"operation": "list", named: keys[:3]}]


@pytest.mark.parametrize("number", [1e300, 1e-300])
def test_a_detail_the_record_takes_passes_the_columns_check(
    app_pool: Any, new_tenant: Callable[[], uuid.UUID], number: float
) -> None:
    # 2 KB as sent, but jsonb keeps numbers as numeric and prints 1e300 with 301 digits: 75 KB as stored, over the
    # CHECK, and the request's transaction failed.
    tenant = new_tenant()
    detail = {"v": [number] * 250}
    assert len(json.dumps(detail)) < MAX_DETAIL_BYTES
    record = _record(tenant, detail)
    PostgresAuditStore(pool=app_pool).record(record)
    [read] = PostgresAuditStore(pool=app_pool).query(AuditQuery(tenant_id=tenant)).items
    assert read.detail[DETAIL_CUT] is True and read.detail["detail_bytes"] > 65536
    # Fewer, it fits in both measures and is kept whole.
    few = {"v": [number] * 20}
    assert _record(tenant, few).detail == few


@pytest.mark.parametrize(
    ("detail", "why"),
    [
        ({"f": math.nan}, NON_FINITE_NUMBER),
        ({"f": [1.0, -math.inf]}, NON_FINITE_NUMBER),
        ({"s": "a\x00b"}, UNSTORABLE_TEXT),
        ({"a\x00b": 1}, UNSTORABLE_TEXT),
        ({"s": "\ud800"}, UNSTORABLE_TEXT),
        ({"nested": [{"s": "x\udfff"}]}, UNSTORABLE_TEXT),
        ({"n": 2**63}, INTEGER_OUT_OF_RANGE),
        ({"n": -(2**63) - 1}, INTEGER_OUT_OF_RANGE),
        ({"n": 10**400}, INTEGER_OUT_OF_RANGE),
        ({"n": 10**5000}, INTEGER_OUT_OF_RANGE),  # past the digits Python prints: measured as None
    ],
)
def test_a_detail_postgres_cannot_store_or_read_back_is_replaced_by_the_marker(
    app_pool: Any, new_tenant: Callable[[], uuid.UUID], detail: dict[str, Any], why: str
) -> None:
    # No writer produces these today, but the record took them: the first three failed the request's transaction
    # (500), and an integer past a float's range was stored, after which every page holding it failed to read.
    tenant = new_tenant()
    record = _record(tenant, detail)
    assert record.detail[DETAIL_CUT] is True and record.detail["detail_unstorable"] == why
    assert record.detail["detail_keys"] == len(detail)
    PostgresAuditStore(pool=app_pool).record(record)
    [read] = PostgresAuditStore(pool=app_pool).query(AuditQuery(tenant_id=tenant)).items
    assert read.detail == record.detail


def test_a_detail_at_the_bounds_of_what_postgres_stores_is_kept_whole(
    app_pool: Any, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    detail = {"max": 2**63 - 1, "min": -(2**63), "f": 1.5e300, "s": "é😀\t", "ok": True}
    record = _record(tenant, detail)
    assert record.detail == detail
    PostgresAuditStore(pool=app_pool).record(record)
    [read] = PostgresAuditStore(pool=app_pool).query(AuditQuery(tenant_id=tenant)).items
    assert read.detail == detail


def test_a_stored_integer_past_a_floats_range_reads_back(app_pool: Any, new_tenant: Callable[[], uuid.UUID]) -> None:
    # Written past the record (before its bound): float() of it raised OverflowError, and the page failed to read.
    tenant = new_tenant()
    with tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute(
            "INSERT INTO app.audit_events (tenant_id, principal_id, action, resource_type, decision, detail)"
            " VALUES (%s, 'p', 'intent.create', 'Intent', 'allow', %s)",
            (tenant, Jsonb({"n": 10**400, "m": -(10**400), "f": 2**70})),
        )
    [read] = PostgresAuditStore(pool=app_pool).query(AuditQuery(tenant_id=tenant)).items
    assert read.detail == {"n": 10**400, "m": -(10**400), "f": float(2**70)}
    # Past the digits Python reads as an integer, as the exact decimal.
    assert json_values.loads("[1" + "0" * 5000 + "]") == [Decimal("1" + "0" * 5000)]
