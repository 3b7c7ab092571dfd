# intent_ref: platform.audit
"""An erased tenant keeps exactly one audit record, its erasure's (ADR 0012): a copy to the store in flight across the
erasure finishes before it and goes with it, a copy once the tenant is gone writes nothing else, and the database
takes no record of the runtime role for a tenant whose row is gone, whatever an instance still caches (migration
0041); the control plane's record of the erasure still reaches the trail."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.cosmos import ContainerProxy
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.api import security
from shared.api.durable import get_durable_client
from shared.api.routers import tenants as tenants_router
from shared.audit import AuditRecord
from shared.audit import outbox as outbox_module
from shared.audit.cosmos import CosmosAuditStore
from shared.audit.cosmos import _document as cosmos_document
from shared.audit.outbox import AuditOutbox, Copied, Delete, Write
from shared.audit.postgres import PostgresAuditStore
from shared.db.session import platform_transaction, tenant_transaction
from shared.tenants import offboarding
from shared.tenants.repository import get_tenant, hold_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_audit_outbox import (  # noqa: F401  # container, missing_container, stores: the fixtures
    _left_to_relay,
    _Stores,
    container,
    missing_container,
    stores,
)
from tests.integration.test_offboarding import _artifacts, _waiting_on_a_lock, marked_for_erasure

pytestmark = [
    pytest.mark.integration,
    # The Cosmos stand-in serves a self-signed certificate; verification is off for it in tests only.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

ADMIN = ["Platform.Admin"]


class _HeldWrites:
    """The store's write as the outbox calls it, held from its first call until `finish` (Cosmos DB answering
    slowly while an erasure runs)."""

    def __init__(self, write: Write) -> None:
        self._write = write
        self.entered, self.finish = threading.Event(), threading.Event()

    def __call__(self, tenant_id: uuid.UUID, document: dict[str, Any]) -> None:
        self.entered.set()
        assert self.finish.wait(30)
        self._write(tenant_id, document)


def _store(
    container: ContainerProxy,
    app_pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
    *,
    held: list[_HeldWrites] | None = None,
) -> CosmosAuditStore:
    """A Cosmos store on `container` (on the process's pools when none is given); with `held`, its writes are held
    (the list gets their `_HeldWrites`)."""

    def outbox(write: Write, delete: Delete) -> AuditOutbox:
        if held is not None:
            held.append(_HeldWrites(write))
            write = held[-1]
        return AuditOutbox(write, delete, pool=app_pool, control_pool=control_pool)

    return CosmosAuditStore(container, outbox=outbox)


def _record(tenant: uuid.UUID, action: str = "intent.update", resource_type: str = "Intent") -> AuditRecord:
    return AuditRecord.new(
        tenant_id=tenant,
        principal_id=f"{tenant}/user",
        action=action,
        resource_type=resource_type,
        resource_id=str(tenant) if resource_type == "Tenant" else "an-intent",
        decision="allow",
        reason="applied",
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        detail={},
        occurred_at=datetime.now(UTC),
    )


def _in_store(container: ContainerProxy, tenant: uuid.UUID) -> list[str]:
    """The actions of the tenant's documents in the store's partition."""
    return [
        document["action"]
        for document in container.query_items(
            "SELECT c.action FROM c WHERE c.tenantId = @tenantId",
            parameters=[{"name": "@tenantId", "value": str(tenant)}],
            partition_key=str(tenant),
        )
    ]


def _waiting(tenant: uuid.UUID, pool: ConnectionPool[Any] | None = None) -> list[str]:
    """The actions of the tenant's records waiting in the outbox."""
    with tenant_transaction(tenant, pool=pool) as conn:
        return [row["document"]["action"] for row in conn.execute("SELECT document FROM app.audit_outbox")]


def _erase_while_held(
    api: ApiHarness,
    azurite: Any,
    container: ContainerProxy,
    tenant: uuid.UUID,
    copy: Callable[[], object],
    held: _HeldWrites,
) -> bool:
    """Run `copy` until its first write to the store is held, erase the tenant meanwhile (through a store on
    `container`), then let the write go; returns whether the erasure had finished before the write went on."""
    with ThreadPoolExecutor(2) as pool:
        copying = pool.submit(copy)
        assert held.entered.wait(30)
        erase = pool.submit(
            offboarding.erase_tenant, marked_for_erasure(tenant), _artifacts(azurite), _store(container)
        )
        deadline = time.monotonic() + 30
        while not erase.done() and not _waiting_on_a_lock(api) and time.monotonic() < deadline:
            time.sleep(0.05)
        erased_first = erase.done()
        held.finish.set()
        copying.result(30)
        assert erase.result(30)["tenants"] == 1
    return erased_first


def test_a_relayed_batch_in_flight_across_an_erasure_holds_nothing_and_is_deleted_once_it_lands(
    api: ApiHarness,
    azurite: Any,
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
) -> None:
    # The relay read its batch, then wrote it with no hold on the tenant: an erasure meanwhile finished both its
    # passes first, and the records it was carrying landed in the erased tenant's partition for good. Holding the
    # tenant row (and so a transaction id) across the writes instead held back every tenant's domain events while a
    # throttled store wrote. The relay holds nothing now, and deletes what it wrote once it finds the tenant gone.
    tenant = api.provision("erased-mid-relay").id
    for _ in range(3):
        _store(missing_container, app_pool, control_pool).record(_record(tenant))  # left to the relay
    assert len(_waiting(tenant, app_pool)) == 3
    held: list[_HeldWrites] = []
    relaying = _store(container, app_pool, control_pool, held=held)

    erased_first = _erase_while_held(
        api, azurite, container, tenant, lambda: relaying._outbox.relay_tenant(tenant), held[0]
    )

    assert erased_first  # nothing of the relay's held the erasure back
    assert _in_store(container, tenant) == []
    assert _waiting(tenant, app_pool) == []


def test_a_copy_after_a_commit_holds_no_connection_while_the_store_writes_and_deletes_what_outlived_an_erasure(
    api: ApiHarness,
    azurite: Any,
    container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The copy that follows a commit runs on the request path: holding the tenant row (and so a pooled connection)
    # while the store wrote, a slow store drained the pool for every tenant. It holds nothing now, so an erasure
    # can finish while it writes; what outlived it the copy deletes from the store again.
    tenant = api.provision("erased-mid-copy").id
    held: list[_HeldWrites] = []
    recording = _store(container, app_pool, control_pool, held=held)
    record = _record(tenant)

    erased_first = _erase_while_held(api, azurite, container, tenant, lambda: recording.record(record), held[0])

    assert erased_first  # nothing of the copy's held the erasure back
    assert _in_store(container, tenant) == []
    assert _waiting(tenant, app_pool) == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_copy_that_cannot_delete_what_outlived_an_erasure_names_it_for_an_operator(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID], caplog: pytest.LogCaptureFixture
) -> None:
    tenant = new_tenant()
    app_pool, control_pool = stores.app_pool, stores.control_pool
    records = _left_to_relay(stores.down(), tenant, 2)
    written: list[str] = []
    deletes: list[uuid.UUID] = []

    def write(tenant_id: uuid.UUID, document: dict[str, Any]) -> None:
        if not written:  # the tenant's erasure ends while the relay writes
            with platform_transaction(pool=control_pool) as conn:
                conn.execute("DELETE FROM app.tenants WHERE id = %s", (tenant_id,))
        written.append(document["id"])

    def delete(tenant_id: uuid.UUID, record_id: uuid.UUID) -> None:
        deletes.append(record_id)
        raise RuntimeError("the store is down")

    assert AuditOutbox(write, delete, pool=app_pool, control_pool=control_pool).relay_tenant(tenant) == Copied(2)
    assert written == [str(r.id) for r in records] and deletes == [records[0].id]
    outlived = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "outlive it" in r.getMessage()]
    assert len(outlived) == 1 and all(str(r.id) in outlived[0] for r in records)
    assert _waiting(tenant, app_pool) == []


def test_once_the_tenant_is_gone_a_copy_writes_its_erasures_record_and_nothing_else(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    container, app_pool, control_pool = stores.container, stores.app_pool, stores.control_pool
    down, up = stores.down(), stores.up()
    # Records that raced the erasure: queued while the row was there, and still waiting once it is gone.
    for _ in range(2):
        down.record(_record(tenant))
    with platform_transaction(pool=control_pool) as conn:
        conn.execute("DELETE FROM app.tenants WHERE id = %s", (tenant,))
    # The erasure's own record, the control plane's, written after the row went; the store is down.
    with platform_transaction(pool=control_pool) as conn:
        down.record(_record(tenant, "tenant.erase", "Tenant"), conn=conn)
    assert sorted(_waiting(tenant, app_pool)) == ["intent.update", "intent.update", "tenant.erase"]

    assert up._outbox.relay_tenant(tenant) == Copied(1)
    assert _in_store(container, tenant) == ["tenant.erase"]
    assert _waiting(tenant, app_pool) == []  # the others are removed unwritten
    # With the store up, the erasure's record is copied once its transaction commits.
    later = new_tenant()
    with platform_transaction(pool=control_pool) as conn:
        conn.execute("DELETE FROM app.tenants WHERE id = %s", (later,))
        up.record(_record(later, "tenant.erase", "Tenant"), conn=conn)
    assert _in_store(container, later) == ["tenant.erase"]
    assert _waiting(later, app_pool) == []


def test_the_runtime_role_adds_no_record_to_the_trail_of_a_tenant_whose_row_is_gone(
    stores: _Stores, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    app_pool, control_pool = stores.app_pool, stores.control_pool
    postgres, cosmos = PostgresAuditStore(app_pool, control_pool), stores.down()
    postgres.record(_record(tenant))  # while the row is there
    with platform_transaction(pool=control_pool) as conn:
        conn.execute("DELETE FROM app.tenants WHERE id = %s", (tenant,))
    for store in (postgres, cosmos):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            store.record(_record(tenant, "request", "Tenant"))
    # Neither through a statement of its own.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(tenant, pool=app_pool) as conn:
        record = _record(tenant)
        conn.execute(
            "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)",
            (tenant, record.id, Jsonb({"id": str(record.id), "tenantId": str(tenant)})),
        )
    # The control plane's record of the erasure goes to either store.
    with platform_transaction(pool=control_pool) as conn:
        postgres.record(_record(tenant, "tenant.erase", "Tenant"), conn=conn)
        cosmos.record(_record(tenant, "tenant.erase", "Tenant"), conn=conn)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        kept = [row["action"] for row in conn.execute("SELECT action FROM app.audit_events ORDER BY occurred_at")]
    assert kept == ["intent.update", "tenant.erase"]
    assert _waiting(tenant, app_pool) == ["tenant.erase"]


def test_an_instance_still_caching_an_erased_tenant_refuses_its_requests_and_records_nothing(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The erasure runs on another instance: this one's tenant directory still holds the suspended tenant for a few
    # seconds, and each request of its tokens wrote a deny record into the erased tenant's trail.
    api.provision("erased-elsewhere", status="suspended")
    headers = api.headers("erased-elsewhere", ["Intent.Reader"])
    assert api.client.get("/api/v1/intents", headers=headers).status_code == 403  # cached here
    assert len(api.audit_rows("erased-elsewhere")) == 1
    taken = security.take_tenant_token

    def take_then_erase(tenant_id: uuid.UUID, *args: Any, **kwargs: Any) -> Any:
        # The erasure commits between this request's rate token and its deny record.
        verdict = taken(tenant_id, *args, **kwargs)
        offboarding.erase_tenant(marked_for_erasure(tenant_id), _artifacts(azurite), PostgresAuditStore())
        return verdict

    monkeypatch.setattr(security, "take_tenant_token", take_then_erase)
    refused = api.client.get("/api/v1/intents", headers=headers)
    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "tenant_suspended"
    assert api.audit_rows("erased-elsewhere") == []
    monkeypatch.setattr(security, "take_tenant_token", taken)
    # Later requests, the tenant still cached: refused alike, and still nothing recorded.
    for _ in range(3):
        later = api.client.get("/api/v1/intents", headers=headers)
        assert (later.status_code, later.json()["reason"]) == (403, "tenant_suspended")
    assert api.audit_rows("erased-elsewhere") == []


def test_the_erase_route_leaves_the_erasures_record_in_the_cosmos_trail_only(
    api: ApiHarness,
    azurite: Any,
    container: ContainerProxy,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api.provision("erasure-operator")
    admin = api.headers("erasure-operator", ADMIN)
    leaving = api.provision("erased-to-cosmos", status="suspended")
    store = _store(container)  # on the process's pools, as the app's
    for _ in range(2):
        store.record(_record(leaving.id))
    assert _in_store(container, leaving.id) == ["intent.update", "intent.update"]
    monkeypatch.setattr(tenants_router, "get_audit_store", lambda: store)
    monkeypatch.setattr(security, "get_audit_store", lambda: store)
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore

    erased = api.client.post(f"/api/v1/tenants/{leaving.id}/erase", json={"confirm_name": leaving.name}, headers=admin)

    assert erased.status_code == 200, erased.text
    assert _in_store(container, leaving.id) == ["tenant.erase"]
    assert _waiting(leaving.id) == []


class _LostConnection:
    """`hold_tenant` as the outbox calls it, but the first `fails` calls lose their connection (the database failing
    over, the pool drained) before the tenant row is looked at."""

    def __init__(self, fails: int) -> None:
        self.fails = fails

    def __call__(self, conn: psycopg.Connection[Any], tenant_id: uuid.UUID) -> bool:
        if self.fails:
            self.fails -= 1
            raise psycopg.OperationalError("the connection to the server was lost")
        return hold_tenant(conn, tenant_id)


def _relay_raising(relay: Callable[[], object]) -> Callable[[], BaseException | None]:
    """`relay`, answering the failure it raised (None if it raised none)."""

    def run() -> BaseException | None:
        try:
            relay()
        except Exception as exc:
            return exc
        return None

    return run


def test_a_relayed_batch_whose_settling_fails_after_an_erasure_is_still_deleted_from_the_store(
    api: ApiHarness,
    azurite: Any,
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The relay read its batch, the tenant was erased (both passes) while it wrote, and the transaction that settles
    # the batch failed before it looked at the tenant row: the rows were gone with the tenant, so nothing ever came
    # back to the written records, and they outlived the erasure unnamed. The relay now looks again.
    tenant = api.provision("erased-mid-settle").id
    for _ in range(2):
        _store(missing_container, app_pool, control_pool).record(_record(tenant))  # left to the relay
    held: list[_HeldWrites] = []
    relaying = _store(container, app_pool, control_pool, held=held)
    monkeypatch.setattr(outbox_module, "hold_tenant", _LostConnection(fails=1))
    failures: list[BaseException | None] = []

    erased_first = _erase_while_held(
        api,
        azurite,
        container,
        tenant,
        lambda: failures.append(_relay_raising(lambda: relaying._outbox.relay_tenant(tenant))()),
        held[0],
    )

    assert erased_first
    assert isinstance(failures[0], psycopg.OperationalError)  # the relay still fails, for the next run to see
    assert _in_store(container, tenant) == []
    assert _waiting(tenant, app_pool) == []


def test_a_copy_that_cannot_tell_whether_its_tenant_is_gone_names_what_it_wrote(
    stores: _Stores,
    new_tenant: Callable[[], uuid.UUID],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = new_tenant()
    records = _left_to_relay(stores.down(), tenant, 2)
    monkeypatch.setattr(outbox_module, "hold_tenant", _LostConnection(fails=2))  # the settling, and the look again

    with pytest.raises(psycopg.OperationalError):
        stores.up()._outbox.relay_tenant(tenant)

    named = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "not settled" in r.getMessage()]
    assert len(named) == 1 and all(str(r.id) in named[0] for r in records)
    assert stores.waiting(tenant) == {r.id for r in records}  # the tenant is there: the next run settles them
    assert stores.up()._outbox.relay_tenant(tenant) == Copied(2)
    assert all(stores.in_store(r) for r in records) and stores.waiting(tenant) == set()


class _SecondListingFails:
    """The artifacts container, but blob storage is unreachable from the second listing of a tenant's blobs on."""

    def __init__(self, blobs: Any) -> None:
        self._blobs, self.listings = blobs, 0

    def list_blobs(self, **kwargs: Any) -> Any:
        self.listings += 1
        if self.listings > 1:
            raise ServiceRequestError("blob storage is unreachable")
        return self._blobs.list_blobs(**kwargs)

    def delete_blob(self, name: str) -> None:
        self._blobs.delete_blob(name)


class _CopyLandsBetweenPasses:
    """A Cosmos store whose first erasure pass is followed by a copy's record landing in the trail: the copy held
    the tenant row when it settled, so the erasure's second pass is what removes it (ADR 0012)."""

    def __init__(self, store: CosmosAuditStore, container: ContainerProxy, record: AuditRecord) -> None:
        self._store, self._container, self._record = store, container, record
        self.passes = 0

    def erase(self, tenant_id: uuid.UUID) -> int:
        self.passes += 1
        erased = self._store.erase(tenant_id)
        if self.passes == 1:
            self._container.create_item(cosmos_document(self._record))
        return erased


def test_an_erasure_whose_late_blob_pass_fails_still_removes_the_records_written_while_its_rows_went(
    api: ApiHarness, azurite: Any, container: ContainerProxy, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = api.provision("erased-blobs-down").id
    blobs = _artifacts(azurite)
    blobs.upload_blob(f"{tenant}/artifacts/build.log", b"log", overwrite=True)
    store = _CopyLandsBetweenPasses(_store(container), container, _record(tenant))

    removed = offboarding.erase_tenant(marked_for_erasure(tenant), _SecondListingFails(blobs), store)  # type: ignore[arg-type]

    assert store.passes == 2 and removed["audit_records"] == 1 and removed["blobs"] == 1
    assert _in_store(container, tenant) == []
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert logged == [f"erasure of tenant {tenant}: blobs written meanwhile could not be removed"]


class _RelayedDuringExport:
    """A Cosmos store whose export, once it has read the trail, lets the relay move the waiting records from the
    outbox to the trail: what the export reads of the two must carry every record either way (ADR 0012)."""

    def __init__(self, store: CosmosAuditStore, relay: Callable[[], object]) -> None:
        self._store, self._relay = store, relay

    def export(self, tenant_id: uuid.UUID, *, conn: Any = None) -> Iterator[dict[str, Any]]:
        yield from self._store.export(tenant_id, conn=conn)
        self._relay()


def test_an_export_carries_a_record_the_relay_moves_from_the_outbox_to_the_trail_while_it_reads(
    api: ApiHarness,
    azurite: Any,
    container: ContainerProxy,
    missing_container: ContainerProxy,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
) -> None:
    # Records committed before the export began are in the outbox or the trail (or both) at every moment, written
    # before they leave the outbox; the export reads the outbox first, so the relay moving one between the two
    # reads cannot hide it. Read the other way round, it was in neither. Records committed after the export read the
    # outbox are the erasure's to delete unarchived, as any row written after the archive was read.
    with platform_transaction() as conn:
        tenant = get_tenant(conn, api.provision("exported-mid-relay").id)
    assert tenant is not None
    waiting = _left_to_relay(_store(missing_container, app_pool, control_pool), tenant.id, 2)
    up = _store(container, app_pool, control_pool)
    moved: list[Copied] = []
    store = _RelayedDuringExport(up, lambda: moved.append(up._outbox.relay_tenant(tenant.id)))

    result = offboarding.export_tenant(tenant, _artifacts(azurite), store)  # type: ignore[arg-type]

    assert moved == [Copied(2)] and _waiting(tenant.id, app_pool) == []
    archive = json.loads(_artifacts(azurite).download_blob(result.blob_name).readall())
    archived = {row["id"] for row in archive["audit_outbox"]} | {row["id"] for row in archive["audit_events"]}
    assert archived >= {str(r.id) for r in waiting}
