# intent_ref: platform.audit
"""A record in the audit outbox reaches its own tenant's trail or none (migration 0039, ADR 0012): the document must
name its row's tenant and record, neither a tenant's SQL nor the control plane can queue one naming another, and
the relay and the Cosmos DB store set aside one that does instead of filing it under the tenant it names."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.audit.cosmos import CosmosAuditStore
from shared.audit.outbox import AuditOutbox, Copied, RecordRefusedError
from shared.db.migrate import APP_MIGRATIONS
from shared.db.roles import OWNER_ROLE
from shared.db.session import platform_transaction, tenant_transaction

pytestmark = pytest.mark.integration

MIGRATION = APP_MIGRATIONS / "0039_finders_reveal_no_secret_and_outbox_documents_own_rows.sql"
_QUEUE = "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)"


class FakeContainer:
    """A container that takes every document, as Cosmos DB files one: under the partition it names."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def create_item(self, body: dict[str, Any]) -> None:
        self.items.append(body)


def _document(tenant: uuid.UUID, record_id: uuid.UUID, resource_type: str = "Intent") -> dict[str, Any]:
    return {
        "id": str(record_id),
        "tenantId": str(tenant),
        "occurredAt": "2026-12-05T00:00:00.000000Z",
        "principalId": "forged",
        "action": "intent.delete",
        "resourceType": resource_type,
        "resourceId": "an-intent",
        "decision": "allow",
        "reason": "applied",
        "requestId": None,
        "detail": {},
    }


def test_a_tenants_transaction_queues_records_of_its_own_trail_only(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    x, y = new_tenant(), new_tenant()
    rid = uuid.uuid4()
    without_tenant = {k: v for k, v in _document(x, rid).items() if k != "tenantId"}
    for document in (_document(y, rid), _document(x, uuid.uuid4()), without_tenant):
        with pytest.raises(psycopg.errors.CheckViolation), tenant_transaction(x, pool=app_pool) as conn:
            conn.execute(_QUEUE, (x, rid, Jsonb(document)))
    # One set aside is never copied, so it may name anything; it cannot be brought back to be copied.
    with pytest.raises(psycopg.errors.CheckViolation), tenant_transaction(x, pool=app_pool) as conn:
        conn.execute(
            "INSERT INTO app.audit_outbox (tenant_id, id, document, refused_at, refusal)"
            " VALUES (%s, %s, %s, now(), 'x')",
            (x, rid, Jsonb(_document(y, rid))),
        )
        conn.execute("UPDATE app.audit_outbox SET refused_at = NULL, refusal = NULL WHERE id = %s", (rid,))


def test_the_control_plane_queues_tenant_records_of_the_rows_tenant_only(
    control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    x, y = new_tenant(), new_tenant()
    rid = uuid.uuid4()
    # Migration 0028's policy lets it add a Tenant record to any tenant's trail: the trail its row names.
    with pytest.raises(psycopg.errors.CheckViolation), platform_transaction(pool=control_pool) as conn:
        conn.execute(_QUEUE, (x, rid, Jsonb(_document(y, rid, "Tenant"))))


def test_the_relay_sets_aside_a_document_naming_another_tenant(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    x, y = new_tenant(), new_tenant()
    container = FakeContainer()
    outboxes: list[AuditOutbox] = []

    def outbox(write: Any, delete: Any) -> AuditOutbox:
        outboxes.append(AuditOutbox(write, delete, pool=app_pool, control_pool=control_pool))
        return outboxes[0]

    store = CosmosAuditStore(container, outbox=outbox)  # type: ignore[arg-type]
    rid = uuid.uuid4()
    with pytest.raises(RecordRefusedError):
        store._write_copy(x, _document(y, rid))
    # Before the store: a document naming another tenant or record than the one its row holds is never written.
    for forged in (_document(y, rid), _document(x, uuid.uuid4())):
        assert outboxes[0]._copy(x, [(rid, forged)]) == Copied(0, set_aside=1)
    assert container.items == []
    # Its own records still go.
    assert outboxes[0]._copy(x, [(rid, _document(x, rid))]) == Copied(1)
    assert [item["tenantId"] for item in container.items] == [str(x)]


def test_the_migration_sets_a_forged_waiting_record_aside_and_keeps_it(
    pg: Any, new_tenant: Callable[[], uuid.UUID]
) -> None:
    x, y = new_tenant(), new_tenant()
    forged, own = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(pg.admin_url, dbname="quantum", row_factory=dict_row) as conn:
        # As a database that had such a record before the migration; all of it rolls back.
        conn.execute("ALTER TABLE app.audit_outbox DROP CONSTRAINT audit_outbox_document_is_its_rows")
        conn.execute(_QUEUE, (x, forged, Jsonb(_document(y, forged))))
        conn.execute(_QUEUE, (x, own, Jsonb(_document(x, own))))
        conn.execute(f"SET LOCAL ROLE {OWNER_ROLE}")
        conn.execute(Path(MIGRATION).read_text().encode())
        conn.execute("RESET ROLE")
        rows = conn.execute(
            "SELECT id, refused_at IS NOT NULL AS aside, refusal, document ->> 'tenantId' AS named"
            " FROM app.audit_outbox WHERE id = ANY(%s) ORDER BY id = %s",
            ([forged, own], own),
        ).fetchall()
        conn.rollback()
    assert [(r["id"], r["aside"], r["named"]) for r in rows] == [(forged, True, str(y)), (own, False, str(x))]
    assert rows[0]["refusal"].startswith("migration 0039")
