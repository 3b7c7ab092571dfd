# intent_ref: platform.audit
"""The audit outbox on the real database and the Cosmos DB stand-in: a transaction's records reach the store exactly
when it commits, an unavailable store delays the trail instead of failing the change, and the relay copies what
was left, once (migration 0027)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from azure.cosmos import ContainerProxy, DatabaseProxy
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.audit import AuditRecord
from shared.audit.cosmos import CosmosAuditStore, create_audit_container
from shared.audit.outbox import AuditOutbox, Copied, Delete, Write
from shared.audit.postgres import PostgresAuditStore
from shared.db.session import platform_transaction, tenant_transaction
from shared.events.outbox import enqueue
from shared.events.publisher import OutboundEvent
from shared.events.relay import relay_pending

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
    def outbox(write: Write, delete: Delete) -> AuditOutbox:
        return AuditOutbox(write, delete, pool=app_pool, control_pool=control_pool)

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
    assert up._outbox.relay_tenant(tenant) == Copied(1)
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


def test_a_record_the_store_refuses_for_good_is_set_aside_and_the_rest_still_go(
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    tenant = new_tenant()
    store = _store(container, app_pool, control_pool)
    before, after = _record(tenant), _record(tenant, "intent.archive")
    poison = uuid.uuid4()
    with tenant_transaction(tenant, pool=app_pool) as conn:
        # One record left to the relay (the store was down at its commit), then one the store will never take
        # (the service answers 400 for a document without an id), queued after it.
        _store(missing_container, app_pool, control_pool).record(before, conn=conn)
        conn.execute(
            "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)",
            (tenant, poison, Jsonb({"tenantId": str(tenant), "action": "intent.update"})),
        )
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.record(after, conn=conn)
    assert _in_store(container, after)  # copied after its own commit
    # The relay copies the first, sets the refused one aside with the store's answer, and goes on.
    relay = _store(container, app_pool, control_pool)._outbox
    assert relay.relay_tenant(tenant) == Copied(copied=1, set_aside=1)
    assert _in_store(container, before)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        kept = conn.execute("SELECT id, refused_at, refusal FROM app.audit_outbox").fetchall()
    assert [row["id"] for row in kept] == [poison]
    assert kept[0]["refused_at"] is not None and kept[0]["refusal"].startswith("400")
    # Set aside, it is never tried again and holds nobody up: the next run finds nothing to copy for the tenant.
    assert relay.relay_tenant(tenant) == Copied(0)
    with platform_transaction(pool=control_pool) as conn:
        waiting = {row[0] for row in conn.execute("SELECT * FROM app.audit_outbox_tenants(1000)").fetchall()}
    assert tenant not in waiting


def test_a_record_without_a_transaction_waits_out_an_outage_instead_of_failing(
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    # A refusal (403) or an erasure joins no change: its record used to go to the store at once, so an outage
    # turned the 403 into a 5xx. It is queued in a transaction of its own now, and copied once the store is back.
    tenant = new_tenant()
    denial = dataclasses.replace(_record(tenant, "intent.delete"), decision="deny", reason="no role")
    _store(missing_container, app_pool, control_pool).record(denial)
    assert _waiting(app_pool, tenant) == {denial.id}
    assert not _in_store(container, denial)
    up = _store(container, app_pool, control_pool)
    assert up._outbox.relay_tenant(tenant) == Copied(1)
    [stored] = _stored(container, denial)
    assert (stored["decision"], stored["reason"]) == ("deny", "no role")
    # With the store up, the copy follows the record's own commit.
    second = _record(tenant, "intent.delete")
    up.record(second)
    assert _in_store(container, second) and _waiting(app_pool, tenant) == set()


def _tenant_record(operator: uuid.UUID, subject: uuid.UUID, action: str = "tenant.create") -> AuditRecord:
    return AuditRecord.new(
        tenant_id=operator,
        principal_id=f"{operator}/operator",
        action=action,
        resource_type="Tenant",
        resource_id=str(subject),
        decision="allow",
        reason="applied",
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        detail={"name": "a-tenant"},
        occurred_at=datetime.now(UTC),
    )


def test_the_control_planes_record_of_a_change_commits_with_the_change(
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    operator, subject = new_tenant(), new_tenant()
    kept, dropped = _tenant_record(operator, subject), _tenant_record(operator, subject, "tenant.update")
    # In the control plane's own transaction, into the operator's trail (migration 0028), with the store down: the
    # change commits and its record waits in the outbox; a change that rolls back leaves no record.
    down = _store(missing_container, app_pool, control_pool)
    with platform_transaction(pool=control_pool) as conn:
        conn.execute("SELECT id FROM app.tenants WHERE id = %s", (subject,))
        down.record(kept, conn=conn)
    with pytest.raises(RuntimeError, match="the change failed"):
        with platform_transaction(pool=control_pool) as conn:
            down.record(dropped, conn=conn)
            raise RuntimeError("the change failed")
    assert _waiting(app_pool, operator) == {kept.id}
    assert _store(container, app_pool, control_pool)._outbox.relay_tenant(operator) == Copied(1)
    assert _in_store(container, kept) and not _in_store(container, dropped)
    # With the store up, the copy follows the control plane's commit.
    later = _tenant_record(operator, subject, "tenant.update")
    with platform_transaction(pool=control_pool) as conn:
        _store(container, app_pool, control_pool).record(later, conn=conn)
    assert _in_store(container, later) and _waiting(app_pool, operator) == set()


def test_the_control_plane_adds_records_about_tenants_only_and_reads_no_trail(
    container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    operator = new_tenant()
    store = _store(container, app_pool, control_pool)
    not_about_a_tenant = _record(operator)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with platform_transaction(pool=control_pool) as conn:
            store.record(not_about_a_tenant, conn=conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with platform_transaction(pool=control_pool) as conn:
            PostgresAuditStore(app_pool, control_pool).record(not_about_a_tenant, conn=conn)
    for statement in ("SELECT count(*) FROM app.audit_outbox", "SELECT count(*) FROM app.audit_events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with platform_transaction(pool=control_pool) as conn:
                conn.execute(statement)  # type: ignore[arg-type]
    # A record about a tenant goes into the Postgres store's table too, in the control plane's transaction.
    about = _tenant_record(operator, new_tenant())
    with platform_transaction(pool=control_pool) as conn:
        PostgresAuditStore(app_pool, control_pool).record(about, conn=conn)
    with tenant_transaction(operator, pool=app_pool) as conn:
        found = conn.execute("SELECT action, resource_type FROM app.audit_events WHERE id = %s", (about.id,)).fetchall()
    assert [(row["action"], row["resource_type"]) for row in found] == [("tenant.create", "Tenant")]


def test_the_erasures_own_record_outlives_the_tenants_row(
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    # Erasure removes the tenant's row, then records itself in the erased tenant's trail (ADR 0012): that record
    # waits in the outbox like any other while the store is down, and is copied once it is back.
    erased = new_tenant()
    with platform_transaction(pool=control_pool) as conn:
        conn.execute("DELETE FROM app.tenants WHERE id = %s", (erased,))
    record = _tenant_record(erased, erased, "tenant.erase")
    with platform_transaction(pool=control_pool) as conn:  # the control plane's record (migration 0041)
        _store(missing_container, app_pool, control_pool).record(record, conn=conn)
    assert _waiting(app_pool, erased) == {record.id}
    assert _store(container, app_pool, control_pool)._outbox.relay_tenant(erased) == Copied(1)
    assert _in_store(container, record) and _waiting(app_pool, erased) == set()


class _Hub:
    """An event publisher that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[OutboundEvent] = []

    def publish(self, hub: str, events: Sequence[OutboundEvent]) -> None:
        self.sent.extend(events)

    def close(self) -> None:
        pass


@pytest.mark.usefixtures("process_pools")
def test_a_batch_the_store_writes_slowly_holds_back_no_tenants_domain_events(
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    # The relay wrote its batch inside the tenant transaction that read it (rows FOR UPDATE, so it had a transaction
    # id), and the event relay sends only the events of transactions older than every one still running: while a
    # throttled store took its writes (minutes), no tenant's domain events or webhooks went out.
    noisy, other = new_tenant(), new_tenant()
    relay_pending(_Hub, max_rounds=100, pool=app_pool, control_pool=control_pool)  # what earlier tests left
    down = _store(missing_container, app_pool, control_pool)
    records = [_record(noisy) for _ in range(3)]
    for record in records:
        down.record(record)  # left to the relay
    up = _store(container, app_pool, control_pool)
    entered, finish = threading.Event(), threading.Event()

    def slow_write(tenant_id: uuid.UUID, document: dict[str, Any]) -> None:
        entered.set()
        assert finish.wait(30)  # the store answers once the other tenant's event has been relayed
        up._write_copy(tenant_id, document)

    relay = AuditOutbox(slow_write, pool=app_pool, control_pool=control_pool)
    hub = _Hub()
    with ThreadPoolExecutor(1) as pool:
        relaying = pool.submit(relay.relay_tenant, noisy)
        try:
            assert entered.wait(30)
            with tenant_transaction(other, pool=app_pool) as conn:
                event_id = str(enqueue(conn, "thing.created", "things/1", {"n": 1}))
            relay_pending(lambda: hub, pool=app_pool, control_pool=control_pool)
        finally:
            finish.set()
        assert relaying.result(30) == Copied(3)
    assert event_id in [event.body["id"] for event in hub.sent]  # while the audit batch was still being written
    assert all(_in_store(container, record) for record in records) and _waiting(app_pool, noisy) == set()


def test_a_relay_pass_stops_writing_its_batch_once_its_time_is_up_and_the_next_takes_the_rest(
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    tenant = new_tenant()
    down = _store(missing_container, app_pool, control_pool)
    records = [_record(tenant) for _ in range(3)]
    for record in records:
        down.record(record)
    up = _store(container, app_pool, control_pool)
    # Its time up after each record: one record a pass, in the order they were queued.
    relay = AuditOutbox(up._write_copy, pool=app_pool, control_pool=control_pool, batch_s=0.0)
    assert relay.relay_tenant(tenant, max_batches=1) == Copied(1)
    assert _in_store(container, records[0]) and _waiting(app_pool, tenant) == {r.id for r in records[1:]}
    assert relay.relay_tenant(tenant) == Copied(2)
    assert all(_in_store(container, record) for record in records) and _waiting(app_pool, tenant) == set()


def test_two_relays_at_once_both_write_the_same_records_and_lose_none(
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    # No row is locked while the store writes, so two relays (two instances' timers, or the relay beside a copy after
    # a commit) may read the same records: the store takes each by its id once, and the second write counts as done.
    tenant = new_tenant()
    down = _store(missing_container, app_pool, control_pool)
    records = [_record(tenant) for _ in range(4)]
    for record in records:
        down.record(record)
    up = _store(container, app_pool, control_pool)
    both_read = threading.Barrier(2, timeout=30)
    first_write: set[int] = set()

    def write(tenant_id: uuid.UUID, document: dict[str, Any]) -> None:
        if threading.get_ident() not in first_write:
            first_write.add(threading.get_ident())
            both_read.wait()  # neither writes before both have read the batch
        up._write_copy(tenant_id, document)

    relays = [AuditOutbox(write, pool=app_pool, control_pool=control_pool) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        copied = list(pool.map(lambda relay: relay.relay_tenant(tenant), relays))
    assert copied == [Copied(4), Copied(4)]
    assert all(len(_stored(container, record)) == 1 for record in records)
    assert _waiting(app_pool, tenant) == set()
