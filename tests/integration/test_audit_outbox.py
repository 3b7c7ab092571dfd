# intent_ref: platform.audit
"""The audit outbox on the real database and the Cosmos DB stand-in: a transaction's records reach the store exactly
when it commits, an unavailable store delays the trail instead of failing the change, and the relay copies what
was left, once (migration 0027)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from azure.cosmos import ContainerProxy, DatabaseProxy
from psycopg_pool import ConnectionPool

from shared.audit import AuditRecord
from shared.audit.cosmos import CosmosAuditStore, create_audit_container
from shared.audit.outbox import AuditOutbox, Write
from shared.db.session import tenant_transaction

pytestmark = [
    pytest.mark.integration,
    # The Cosmos stand-in serves a self-signed certificate; verification is off for it in tests only.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]


@pytest.fixture(scope="module")
def container(cosmos_database: DatabaseProxy) -> ContainerProxy:
    return create_audit_container(cosmos_database, f"audit-outbox-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def missing_container(cosmos_database: DatabaseProxy) -> ContainerProxy:
    # A store that refuses every write: the container was never created (the service answers 404).
    return cosmos_database.get_container_client(f"never-created-{uuid.uuid4().hex[:8]}")


def _store(
    container: ContainerProxy, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> CosmosAuditStore:
    def outbox(write: Write) -> AuditOutbox:
        return AuditOutbox(write, pool=app_pool, control_pool=control_pool)

    return CosmosAuditStore(container, outbox=outbox)


def _record(tenant: uuid.UUID, action: str = "intent.update") -> AuditRecord:
    return AuditRecord.new(
        tenant_id=tenant,
        principal_id=f"{tenant}/user",
        action=action,
        resource_type="Intent",
        resource_id="an-intent",
        decision="allow",
        reason="applied",
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        detail={"changed": True},
        occurred_at=datetime.now(UTC),
    )


def _stored(container: ContainerProxy, record: AuditRecord) -> list[dict[str, Any]]:
    # A query, not a point read: the stand-in answers a point read of a missing document with a 500, not a 404.
    return list(
        container.query_items(
            "SELECT * FROM c WHERE c.tenantId = @tenantId AND c.id = @id",
            parameters=[
                {"name": "@tenantId", "value": str(record.tenant_id)},
                {"name": "@id", "value": str(record.id)},
            ],
            partition_key=str(record.tenant_id),
        )
    )


def _in_store(container: ContainerProxy, record: AuditRecord) -> bool:
    return len(_stored(container, record)) == 1


def _waiting(app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> set[uuid.UUID]:
    with tenant_transaction(tenant, pool=app_pool) as conn:
        return {row["id"] for row in conn.execute("SELECT id FROM app.audit_outbox")}


def test_a_committed_transactions_records_reach_the_store_once_it_commits(
    container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    tenant = new_tenant()
    store = _store(container, app_pool, control_pool)
    records = [_record(tenant), _record(tenant, "intent.archive")]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        for record in records:
            store.record(record, conn=conn)
        # Inside the transaction: queued with the change, not yet in the store.
        assert not any(_in_store(container, record) for record in records)
        assert {row["id"] for row in conn.execute("SELECT id FROM app.audit_outbox")} == {r.id for r in records}
    assert all(_in_store(container, record) for record in records)
    assert _waiting(app_pool, tenant) == set()
    [stored] = _stored(container, records[0])
    assert (stored["action"], stored["detail"]) == ("intent.update", {"changed": True})


def test_a_rolled_back_transactions_records_reach_nothing(
    container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    tenant = new_tenant()
    store = _store(container, app_pool, control_pool)
    record = _record(tenant)
    with pytest.raises(RuntimeError, match="the change failed"):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            store.record(record, conn=conn)
            raise RuntimeError("the change failed")
    assert not _in_store(container, record)
    assert _waiting(app_pool, tenant) == set()


def test_a_store_that_is_down_delays_the_trail_and_the_relay_copies_it_once(
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    tenant, other = new_tenant(), new_tenant()
    down = _store(missing_container, app_pool, control_pool)
    first, second = _record(tenant), _record(other)
    # The change commits although the store refuses its record: the record waits in the outbox.
    with tenant_transaction(tenant, pool=app_pool) as conn:
        down.record(first, conn=conn)
        conn.execute("SELECT 1")
    assert _waiting(app_pool, tenant) == {first.id}
    # While it rests after that failure, a commit does not try the store again: the record waits too.
    with tenant_transaction(other, pool=app_pool) as conn:
        down.record(second, conn=conn)
    assert _waiting(app_pool, other) == {second.id}
    # The relay of a store that is down copies nothing and loses nothing.
    result = down._outbox.relay()
    assert result.copied == 0 and result.failed_tenants >= 2
    assert _waiting(app_pool, tenant) == {first.id} and _waiting(app_pool, other) == {second.id}
    # Once the store is back, the relay copies each tenant's records into that tenant's partition.
    up = _store(container, app_pool, control_pool)
    assert up.relay_queued() >= 2
    assert _in_store(container, first) and _in_store(container, second)
    assert [document["tenantId"] for document in _stored(container, second)] == [str(other)]
    assert _waiting(app_pool, tenant) == set() and _waiting(app_pool, other) == set()
    # A record the store holds already (copied, then its removal from the outbox failed) is removed, not refused.
    with tenant_transaction(tenant, pool=app_pool) as conn:
        down.record(first, conn=conn)  # the same id again, queued; the resting store leaves it
    assert _waiting(app_pool, tenant) == {first.id}
    assert up._outbox.relay_tenant(tenant) == 1
    assert _waiting(app_pool, tenant) == set()


def test_a_tenant_transaction_cannot_queue_another_tenants_record(
    container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    tenant, other = new_tenant(), new_tenant()
    store = _store(container, app_pool, control_pool)
    foreign = _record(other)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            store.record(foreign, conn=conn)
    assert not _in_store(container, foreign)
    assert _waiting(app_pool, other) == set()
