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
from shared.audit import outbox as audit_outbox
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


def _left_to_relay(down: CosmosAuditStore, tenant: uuid.UUID, count: int) -> list[AuditRecord]:
    """`count` new records of the tenant, each recorded in a transaction of its own through `down`, a store that
    is down: they wait in the outbox for the relay."""
    records = [_record(tenant) for _ in range(count)]
    for record in records:
        down.record(record)
    return records


@dataclasses.dataclass(frozen=True)
class _Stores:
    """The module's audit container and the app's pools, with Cosmos stores on them that are up or down."""

    container: ContainerProxy
    missing_container: ContainerProxy
    app_pool: ConnectionPool[Any]
    control_pool: ConnectionPool[Any]

    def up(self) -> CosmosAuditStore:
        """A new store on the container."""
        return _store(self.container, self.app_pool, self.control_pool)

    def down(self) -> CosmosAuditStore:
        """A new store that refuses every write (its container was never created)."""
        return _store(self.missing_container, self.app_pool, self.control_pool)

    def stored(self, record: AuditRecord) -> list[dict[str, Any]]:
        """The record's documents in the container."""
        # A query, not a point read: the stand-in answers a point read of a missing document with a 500, not a 404.
        return list(
            self.container.query_items(
                "SELECT * FROM c WHERE c.tenantId = @tenantId AND c.id = @id",
                parameters=[
                    {"name": "@tenantId", "value": str(record.tenant_id)},
                    {"name": "@id", "value": str(record.id)},
                ],
                partition_key=str(record.tenant_id),
            )
        )

    def in_store(self, record: AuditRecord) -> bool:
        """Whether the container holds the record, once."""
        return len(self.stored(record)) == 1

    def waiting(self, tenant: uuid.UUID) -> set[uuid.UUID]:
        """The ids of the tenant's records waiting in the outbox."""
        with tenant_transaction(tenant, pool=self.app_pool) as conn:
            return {row["id"] for row in conn.execute("SELECT id FROM app.audit_outbox")}


@pytest.fixture
def stores(
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
) -> _Stores:
    return _Stores(container, missing_container, app_pool, control_pool)


def test_a_committed_transactions_records_reach_the_store_once_it_commits(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    store = stores.up()
    records = [_record(tenant), _record(tenant, "intent.archive")]
    with tenant_transaction(tenant, pool=stores.app_pool) as conn:
        for record in records:
            store.record(record, conn=conn)
        # Inside the transaction: queued with the change, not yet in the store.
        assert not any(stores.in_store(record) for record in records)
        assert {row["id"] for row in conn.execute("SELECT id FROM app.audit_outbox")} == {r.id for r in records}
    assert all(stores.in_store(record) for record in records)
    assert stores.waiting(tenant) == set()
    [stored] = stores.stored(records[0])
    assert (stored["action"], stored["detail"]) == ("intent.update", {"changed": True})


def test_a_rolled_back_transactions_records_reach_nothing(stores: _Stores, new_tenant: Callable[[], uuid.UUID]) -> None:
    tenant = new_tenant()
    store = stores.up()
    record = _record(tenant)
    with pytest.raises(RuntimeError, match="the change failed"):
        with tenant_transaction(tenant, pool=stores.app_pool) as conn:
            store.record(record, conn=conn)
            raise RuntimeError("the change failed")
    assert not stores.in_store(record)
    assert stores.waiting(tenant) == set()


def test_a_store_that_is_down_delays_the_trail_and_the_relay_copies_it_once(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = new_tenant(), new_tenant()
    down = stores.down()
    first, second = _record(tenant), _record(other)
    # The change commits although the store refuses its record: the record waits in the outbox.
    with tenant_transaction(tenant, pool=stores.app_pool) as conn:
        down.record(first, conn=conn)
        conn.execute("SELECT 1")
    assert stores.waiting(tenant) == {first.id}
    # While it rests after that failure, a commit does not try the store again: the record waits too.
    with tenant_transaction(other, pool=stores.app_pool) as conn:
        down.record(second, conn=conn)
    assert stores.waiting(other) == {second.id}
    # The relay of a store that is down copies nothing and loses nothing.
    result = down._outbox.relay()
    assert result.copied == 0 and result.failed_tenants >= 2
    assert stores.waiting(tenant) == {first.id} and stores.waiting(other) == {second.id}
    # Once the store is back, the relay copies each tenant's records into that tenant's partition.
    up = stores.up()
    assert up.relay_queued() >= 2
    assert stores.in_store(first) and stores.in_store(second)
    assert [document["tenantId"] for document in stores.stored(second)] == [str(other)]
    assert stores.waiting(tenant) == set() and stores.waiting(other) == set()
    # A record the store holds already (copied, then its removal from the outbox failed) is removed, not refused.
    with tenant_transaction(tenant, pool=stores.app_pool) as conn:
        down.record(first, conn=conn)  # the same id again, queued; the resting store leaves it
    assert stores.waiting(tenant) == {first.id}
    assert up._outbox.relay_tenant(tenant) == Copied(1)
    assert stores.waiting(tenant) == set()


def test_a_tenant_transaction_cannot_queue_another_tenants_record(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = new_tenant(), new_tenant()
    store = stores.up()
    foreign = _record(other)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with tenant_transaction(tenant, pool=stores.app_pool) as conn:
            store.record(foreign, conn=conn)
    assert not stores.in_store(foreign)
    assert stores.waiting(other) == set()


def test_a_record_the_store_refuses_for_good_is_set_aside_and_the_rest_still_go(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    store = stores.up()
    before, after = _record(tenant), _record(tenant, "intent.archive")
    poison = uuid.uuid4()
    with tenant_transaction(tenant, pool=stores.app_pool) as conn:
        # One record left to the relay (the store was down at its commit), then one the store will never take
        # (the service answers 400 for a document without an id), queued after it.
        stores.down().record(before, conn=conn)
        conn.execute(
            "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)",
            (tenant, poison, Jsonb({"tenantId": str(tenant), "action": "intent.update"})),
        )
    with tenant_transaction(tenant, pool=stores.app_pool) as conn:
        store.record(after, conn=conn)
    assert stores.in_store(after)  # copied after its own commit
    # The relay copies the first, sets the refused one aside with the store's answer, and goes on.
    relay = stores.up()._outbox
    assert relay.relay_tenant(tenant) == Copied(copied=1, set_aside=1)
    assert stores.in_store(before)
    with tenant_transaction(tenant, pool=stores.app_pool) as conn:
        kept = conn.execute("SELECT id, refused_at, refusal FROM app.audit_outbox").fetchall()
    assert [row["id"] for row in kept] == [poison]
    assert kept[0]["refused_at"] is not None and kept[0]["refusal"].startswith("400")
    # Set aside, it is never tried again and holds nobody up: the next run finds nothing to copy for the tenant.
    assert relay.relay_tenant(tenant) == Copied(0)
    with platform_transaction(pool=stores.control_pool) as conn:
        waiting = {row[0] for row in conn.execute("SELECT * FROM app.audit_outbox_tenants(1000)").fetchall()}
    assert tenant not in waiting


def test_a_record_without_a_transaction_waits_out_an_outage_instead_of_failing(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    # A refusal (403) or an erasure joins no change: its record used to go to the store at once, so an outage
    # turned the 403 into a 5xx. It is queued in a transaction of its own now, and copied once the store is back.
    tenant = new_tenant()
    denial = dataclasses.replace(_record(tenant, "intent.delete"), decision="deny", reason="no role")
    stores.down().record(denial)
    assert stores.waiting(tenant) == {denial.id}
    assert not stores.in_store(denial)
    up = stores.up()
    assert up._outbox.relay_tenant(tenant) == Copied(1)
    [stored] = stores.stored(denial)
    assert (stored["decision"], stored["reason"]) == ("deny", "no role")
    # With the store up, the copy follows the record's own commit.
    second = _record(tenant, "intent.delete")
    up.record(second)
    assert stores.in_store(second) and stores.waiting(tenant) == set()


def _tenant_record(operator: uuid.UUID, subject: uuid.UUID, action: str = "tenant.create") -> AuditRecord:
    """A control plane's record about the tenant `subject`, in the operator's trail."""
    return dataclasses.replace(
        _record(operator, action),
        principal_id=f"{operator}/operator",
        resource_type="Tenant",
        resource_id=str(subject),
        detail={"name": "a-tenant"},
    )


def test_the_control_planes_record_of_a_change_commits_with_the_change(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    operator, subject = new_tenant(), new_tenant()
    kept, dropped = _tenant_record(operator, subject), _tenant_record(operator, subject, "tenant.update")
    # In the control plane's own transaction, into the operator's trail (migration 0028), with the store down: the
    # change commits and its record waits in the outbox; a change that rolls back leaves no record.
    down = stores.down()
    with platform_transaction(pool=stores.control_pool) as conn:
        conn.execute("SELECT id FROM app.tenants WHERE id = %s", (subject,))
        down.record(kept, conn=conn)
    with pytest.raises(RuntimeError, match="the change failed"):
        with platform_transaction(pool=stores.control_pool) as conn:
            down.record(dropped, conn=conn)
            raise RuntimeError("the change failed")
    assert stores.waiting(operator) == {kept.id}
    assert stores.up()._outbox.relay_tenant(operator) == Copied(1)
    assert stores.in_store(kept) and not stores.in_store(dropped)
    # With the store up, the copy follows the control plane's commit.
    later = _tenant_record(operator, subject, "tenant.update")
    with platform_transaction(pool=stores.control_pool) as conn:
        stores.up().record(later, conn=conn)
    assert stores.in_store(later) and stores.waiting(operator) == set()


def test_the_control_plane_adds_records_about_tenants_only_and_reads_no_trail(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    operator = new_tenant()
    app_pool, control_pool = stores.app_pool, stores.control_pool
    store = stores.up()
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


def test_the_erasures_own_record_outlives_the_tenants_row(stores: _Stores, new_tenant: Callable[[], uuid.UUID]) -> None:
    # Erasure removes the tenant's row, then records itself in the erased tenant's trail (ADR 0012): that record
    # waits in the outbox like any other while the store is down, and is copied once it is back.
    erased = new_tenant()
    with platform_transaction(pool=stores.control_pool) as conn:
        conn.execute("DELETE FROM app.tenants WHERE id = %s", (erased,))
    record = _tenant_record(erased, erased, "tenant.erase")
    with platform_transaction(pool=stores.control_pool) as conn:  # the control plane's record (migration 0041)
        stores.down().record(record, conn=conn)
    assert stores.waiting(erased) == {record.id}
    assert stores.up()._outbox.relay_tenant(erased) == Copied(1)
    assert stores.in_store(record) and stores.waiting(erased) == set()


class _Hub:
    """An event publisher that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[OutboundEvent] = []

    def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
        self.sent.extend(events)

    def close(self) -> None:
        pass


@pytest.mark.usefixtures("process_pools")
def test_a_batch_the_store_writes_slowly_holds_back_no_tenants_domain_events(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    # The relay wrote its batch inside the tenant transaction that read it (rows FOR UPDATE, so it had a transaction
    # id), and the event relay sends only the events of transactions older than every one still running: while a
    # throttled store took its writes (minutes), no tenant's domain events or webhooks went out.
    noisy, other = new_tenant(), new_tenant()
    app_pool, control_pool = stores.app_pool, stores.control_pool
    relay_pending(_Hub, max_rounds=100, pool=app_pool, control_pool=control_pool)  # what earlier tests left
    records = _left_to_relay(stores.down(), noisy, 3)
    up = stores.up()
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
    assert all(stores.in_store(record) for record in records) and stores.waiting(noisy) == set()


def test_a_relay_pass_stops_writing_its_batch_once_its_time_is_up_and_the_next_takes_the_rest(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    records = _left_to_relay(stores.down(), tenant, 3)
    # Its time up after each record: one record a pass, in the order they were queued.
    relay = AuditOutbox(stores.up()._write_copy, pool=stores.app_pool, control_pool=stores.control_pool, batch_s=0.0)
    assert relay.relay_tenant(tenant, max_batches=1) == Copied(1)
    assert stores.in_store(records[0]) and stores.waiting(tenant) == {r.id for r in records[1:]}
    assert relay.relay_tenant(tenant) == Copied(2)
    assert all(stores.in_store(record) for record in records) and stores.waiting(tenant) == set()


def test_two_relays_at_once_both_write_the_same_records_and_lose_none(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    # No row is locked while the store writes, so two relays (two instances' timers, or the relay beside a copy after
    # a commit) may read the same records: the store takes each by its id once, and the second write counts as done.
    tenant = new_tenant()
    records = _left_to_relay(stores.down(), tenant, 4)
    up = stores.up()
    both_read = threading.Barrier(2, timeout=30)
    first_write: set[int] = set()

    def write(tenant_id: uuid.UUID, document: dict[str, Any]) -> None:
        if threading.get_ident() not in first_write:
            first_write.add(threading.get_ident())
            both_read.wait()  # neither writes before both have read the batch
        up._write_copy(tenant_id, document)

    relays = [AuditOutbox(write, pool=stores.app_pool, control_pool=stores.control_pool) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        copied = list(pool.map(lambda relay: relay.relay_tenant(tenant), relays))
    assert copied == [Copied(4), Copied(4)]
    assert all(len(stores.stored(record)) == 1 for record in records)
    assert stores.waiting(tenant) == set()


def test_a_relay_run_stops_at_its_budget_and_the_tenants_it_did_not_reach_keep_their_place(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    # A throttled store: each write takes two seconds (the SDK's retries). Without a run budget a run lasted tenants x
    # MAX_BATCHES x that: at MAX_TENANTS past the host's functionTimeout.
    tenants = [new_tenant() for _ in range(3)]
    queued = {tenant: _queued(stores, tenant, 30) for tenant in tenants}
    now = [0.0]

    def write(tenant_id: uuid.UUID, document: dict[str, Any]) -> None:
        if tenant_id not in queued:
            raise ConnectionError("another test's record: left where it is")
        now[0] += 2.0

    relay = AuditOutbox(write, pool=stores.app_pool, control_pool=stores.control_pool, clock=lambda: now[0])
    relay.relay()
    # Nothing starts past the budget; a batch begun before it writes its first record.
    assert now[0] <= audit_outbox.RUN_BUDGET_S + 2.0
    first, second, third = (queued[tenant] - stores.waiting(tenant) for tenant in tenants)
    assert len(first) == audit_outbox.MAX_BATCHES and 0 < len(second) < 30 and third == set()
    # The tenant not reached waits longest but for the two served: the next run starts with those three, before a
    # tenant whose records came later.
    later = new_tenant()
    _queued(stores, later, 1)
    with platform_transaction(pool=stores.control_pool) as conn:
        order = [row["t"] for row in conn.execute("SELECT t FROM app.audit_outbox_tenants(100000) AS w (t)")]
    assert [t for t in order if t in {*tenants, later}] == [*tenants, later]


def _queued(stores: _Stores, tenant: uuid.UUID, count: int) -> set[uuid.UUID]:
    """`count` records of the tenant queued straight into the outbox, as a store that was down leaves them."""
    ids = [uuid.uuid4() for _ in range(count)]
    with tenant_transaction(tenant, pool=stores.app_pool) as conn:
        for record_id in ids:
            document = {"id": str(record_id), "tenantId": str(tenant)}
            conn.execute(
                "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)",
                (tenant, record_id, Jsonb(document)),
            )
    return set(ids)
