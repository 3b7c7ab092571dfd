# intent_ref: platform.tenants
"""A tenant's export carries its audit trail wherever the audit store keeps it (ADR 0012, amended 2026-12-06): from
Cosmos DB (the stand-in of tests/cosmos_emulator.py) read by partition a page at a time, from Postgres once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.cosmos import ContainerProxy, DatabaseProxy
from psycopg_pool import ConnectionPool

from shared.audit import AuditRecord
from shared.audit import cosmos as cosmos_audit
from shared.audit.cosmos import CosmosAuditStore, create_audit_container
from shared.audit.outbox import AuditOutbox, Delete, Write
from shared.audit.postgres import PostgresAuditStore
from shared.db.session import tenant_transaction
from shared.tenants import offboarding
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_offboarding import ADMIN, _artifacts, exported_by_job

pytestmark = [
    pytest.mark.integration,
    # The Cosmos stand-in serves a self-signed certificate; verification is off for it in tests only.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

T0 = datetime(2031, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
COLUMNS = {
    "tenant_id",
    "id",
    "occurred_at",
    "principal_id",
    "action",
    "resource_type",
    "resource_id",
    "decision",
    "reason",
    "request_id",
    "detail",
}


@pytest.fixture(scope="module")
def container(cosmos_database: DatabaseProxy) -> ContainerProxy:
    return create_audit_container(cosmos_database, f"audit-export-{uuid.uuid4().hex[:8]}")


def _record(tenant_id: uuid.UUID, n: int) -> AuditRecord:
    return AuditRecord.new(
        tenant_id=tenant_id,
        principal_id=f"{tenant_id}/user",
        action="intent.update",
        resource_type="Intent",
        resource_id=f"intent-{n}",
        decision="allow",
        reason="applied",
        request_id=f"req-{n}",
        detail={"n": n},
        occurred_at=T0 + timedelta(seconds=n),
    )


def _archive(azurite: Any, blob_name: str) -> dict[str, Any]:
    return dict(json.loads(_artifacts(azurite).download_blob(blob_name).readall()))


def test_the_export_carries_the_tenants_cosmos_trail_read_by_partition_a_page_at_a_time(
    api: ApiHarness,
    azurite: Any,
    container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def outbox(write: Write, delete: Delete) -> AuditOutbox:
        return AuditOutbox(write, delete, pool=app_pool, control_pool=control_pool)

    store = CosmosAuditStore(container, outbox=outbox)
    api.provision("export-trail-operator")
    exported, other = api.provision("export-cosmos-trail"), api.provision("export-cosmos-other")
    records = [_record(exported.id, n) for n in range(5)]
    for record in [*records, _record(other.id, 0), _record(other.id, 1)]:
        store.record(record)  # queued in the outbox and copied to the container at once
    queries: list[dict[str, Any]] = []
    pages: list[list[Any]] = []
    real_query_items = container.query_items

    def spy(query: str, *args: Any, **kwargs: Any) -> Any:
        queries.append({"query": query, **kwargs})
        items = real_query_items(query, *args, **kwargs)
        real_by_page = items.by_page

        def by_page(*page_args: Any, **page_kwargs: Any) -> Iterator[list[Any]]:
            for page in real_by_page(*page_args, **page_kwargs):
                pages.append(list(page))
                yield pages[-1]

        monkeypatch.setattr(items, "by_page", by_page)
        return items

    # The stand-in ignores the partition key, so what is sent is checked, and the other tenant's records must stay
    # out by the query's own tenant predicate.
    monkeypatch.setattr(container, "query_items", spy)
    monkeypatch.setattr(cosmos_audit, "EXPORT_PAGE_ITEMS", 2)
    monkeypatch.setattr(offboarding, "get_audit_store", lambda: store)  # the app configured with Cosmos DB

    answer = exported_by_job(api, exported.id, api.headers("export-trail-operator", ADMIN))

    archive = _archive(azurite, answer["blob_name"])
    trail = archive["audit_events"]
    assert sorted(row["id"] for row in trail) == sorted(str(r.id) for r in records)
    assert answer["counts"]["audit_events"] == 5 and archive["audit_outbox"] == []
    # Rows as the Postgres store's table archives them: the same columns, the same text of their values.
    first = next(row for row in trail if row["id"] == str(records[0].id))
    assert set(first) == COLUMNS
    assert first["occurred_at"] == str(T0) and first["tenant_id"] == str(exported.id) and first["detail"] == {"n": 0}
    assert queries and all(
        q["partition_key"] == str(exported.id)
        and "WHERE c.tenantId = @tenantId" in q["query"]
        and q["parameters"] == [{"name": "@tenantId", "value": str(exported.id)}]
        and q["max_item_count"] == 2
        for q in queries
    )
    # Read two records a round trip: the trail is never held whole.
    assert len(pages) >= 3 and max(len(page) for page in pages) <= 2


def test_the_export_carries_the_postgres_trail_once(
    api: ApiHarness, azurite: Any, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    exported = api.provision("export-postgres-trail")
    store = PostgresAuditStore(app_pool, control_pool)
    records = [_record(exported.id, n) for n in range(3)]
    for record in records:
        store.record(record)
    with tenant_transaction(exported.id) as conn:
        tenant = get_tenant(conn, exported.id)
    assert tenant is not None

    result = offboarding.export_tenant(tenant, _artifacts(azurite), store)

    trail = _archive(azurite, result.blob_name)["audit_events"]
    assert sorted(row["id"] for row in trail) == sorted(str(r.id) for r in records)  # each once
    assert result.counts["audit_events"] == 3
    first = next(row for row in trail if row["id"] == str(records[0].id))
    assert set(first) == COLUMNS and first["occurred_at"] == str(T0) and first["detail"] == {"n": 0}
