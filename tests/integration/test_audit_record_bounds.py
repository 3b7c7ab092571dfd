# intent_ref: platform.audit
"""An audit record's size is the platform's, not the request's (migration 0072, ADR 0012 amended 2026-12-07): a body's
name goes into a record only as its model would take it, a detail over the record's bound is replaced by a marker
(the record is kept), and the tables refuse an oversized detail or document written past the record."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from azure.cosmos import ContainerProxy, DatabaseProxy
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared.audit import AuditRecord
from shared.audit import factory as audit_factory
from shared.audit.cosmos import CosmosAuditStore, create_audit_container
from shared.audit.model import DETAIL_CUT, MAX_DETAIL_BYTES, detail_bytes
from shared.db.migrate import APP_MIGRATIONS
from shared.db.roles import OWNER_ROLE
from shared.db.session import tenant_transaction
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = [
    pytest.mark.integration,
    # The Cosmos stand-in serves a self-signed certificate; verification is off for it in tests only.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

MIGRATION = APP_MIGRATIONS / "0072_audit_detail_bounded.sql"
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
        assert record.detail == {DETAIL_CUT: True, "detail_bytes": detail_bytes(large)}
        assert (record.action, record.decision, record.resource_id) == ("intent.create", "allow", "an-intent")
        assert detail_bytes(record.to_public()["detail"]) < 100


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


def test_the_migration_cuts_a_waiting_oversized_detail_and_keeps_the_record(
    pg: Any, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    big, small = uuid.uuid4(), uuid.uuid4()

    def document(record_id: uuid.UUID, detail: dict[str, Any]) -> Jsonb:
        return Jsonb({"id": str(record_id), "tenantId": str(tenant), "action": "intent.create", "detail": detail})

    with psycopg.connect(pg.admin_url, dbname="quantum", row_factory=dict_row) as conn:
        # As a database that had such a record before the migration; all of it rolls back.
        conn.execute("ALTER TABLE app.audit_outbox DROP CONSTRAINT audit_outbox_document_bounded")
        conn.execute("ALTER TABLE app.audit_events DROP CONSTRAINT audit_events_detail_bounded")
        queue = "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)"
        conn.execute(queue, (tenant, big, document(big, {"name": "é" * 100_000})))
        conn.execute(queue, (tenant, small, document(small, {"name": "web"})))
        # A record of the trail written as large before the migration: kept as it was, the CHECK left NOT VALID.
        conn.execute(
            "INSERT INTO app.audit_events (tenant_id, principal_id, action, resource_type, decision, detail)"
            " VALUES (%s, 'p', 'intent.create', 'Intent', 'allow', %s)",
            (tenant, Jsonb(_BIG)),
        )
        conn.execute(f"SET LOCAL ROLE {OWNER_ROLE}")
        conn.execute(Path(MIGRATION).read_text().encode())
        conn.execute("RESET ROLE")
        rows = conn.execute(
            "SELECT id, refused_at IS NOT NULL AS aside, document -> 'detail' AS detail FROM app.audit_outbox"
            " WHERE id = ANY(%s) ORDER BY id = %s",
            ([big, small], small),
        ).fetchall()
        validated = conn.execute(
            "SELECT conname, convalidated FROM pg_catalog.pg_constraint"
            " WHERE conname IN ('audit_events_detail_bounded', 'audit_outbox_document_bounded') ORDER BY conname"
        ).fetchall()
        kept = conn.execute(
            "SELECT count(*) AS n FROM app.audit_events WHERE tenant_id = %s AND detail = %s", (tenant, Jsonb(_BIG))
        ).fetchone()
        conn.rollback()
    assert [(row["conname"], row["convalidated"]) for row in validated] == [
        ("audit_events_detail_bounded", False),
        ("audit_outbox_document_bounded", True),
    ]
    assert kept is not None and kept["n"] == 1
    assert [(row["id"], row["aside"]) for row in rows] == [(big, False), (small, False)]
    assert rows[0]["detail"][DETAIL_CUT] is True and rows[0]["detail"]["detail_bytes"] > 200_000
    assert rows[1]["detail"] == {"name": "web"}
