# intent_ref: platform.audit
"""The audit outbox's copy after a commit is bounded and paused per tenant (ADR 0012, amended 2026-12-07): it runs in
the request, so a slow store costs that request at most `INLINE_S` and no SDK retries, and the relay copies what it
left; one tenant's failing copies pause that tenant's alone, and the relay serves the others before probing it; a
store that refuses every record of a batch alike is taken to be at fault and the records wait."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from azure.cosmos.exceptions import CosmosClientTimeoutError, CosmosHttpResponseError
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.audit import AuditRecord
from shared.audit import outbox as audit_outbox
from shared.audit.cosmos import CosmosAuditStore
from shared.audit.outbox import AuditOutbox, Copied, Delete, Write
from shared.db.session import tenant_transaction

pytestmark = pytest.mark.integration


class StandInContainer:
    """A Cosmos DB container on a clock of the test's: each write takes `delay_s[tenant]` (default `delay_s[None]`),
    or fails with `failing[tenant]`; another test's record (a tenant not in `tenants`) is left where it is. It honours
    the SDK's per-call `timeout` as the SDK does: a write that would take longer gives up when it has passed
    (CosmosClientTimeoutError)."""

    def __init__(self, now: list[float], *tenants: uuid.UUID) -> None:
        self.now = now
        self.tenants = {str(tenant) for tenant in tenants}
        self.items: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.delay_s: dict[str | None, float] = {None: 0.0}
        self.failing: dict[str, Exception] = {}

    def create_item(self, body: dict[str, Any], **options: Any) -> None:
        tenant = body["tenantId"]
        if tenant not in self.tenants:
            raise ConnectionError("another test's record: left where it is")
        self.calls.append((tenant, options))
        if tenant in self.failing:
            raise self.failing[tenant]
        delay = self.delay_s.get(tenant, self.delay_s[None])
        timeout = options.get("timeout")
        if timeout is not None and delay > timeout:
            self.now[0] += timeout
            raise CosmosClientTimeoutError()
        self.now[0] += delay
        self.items.append(body)

    def ids(self) -> set[uuid.UUID]:
        return {uuid.UUID(item["id"]) for item in self.items}


def _store(
    container: StandInContainer, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> tuple[CosmosAuditStore, AuditOutbox]:
    outboxes: list[AuditOutbox] = []

    def outbox(write: Write, delete: Delete) -> AuditOutbox:
        outboxes.append(
            AuditOutbox(write, delete, pool=app_pool, control_pool=control_pool, clock=lambda: container.now[0])
        )
        return outboxes[0]

    store = CosmosAuditStore(container, outbox=outbox)  # type: ignore[arg-type]  # a stand-in container
    return store, outboxes[0]


def _record(tenant: uuid.UUID) -> AuditRecord:
    return AuditRecord.new(
        tenant_id=tenant,
        principal_id=f"{tenant}/user",
        action="intent.update",
        resource_type="Intent",
        resource_id="an-intent",
        decision="allow",
    )


def _committed(store: CosmosAuditStore, tenant: uuid.UUID, app_pool: ConnectionPool[Any]) -> AuditRecord:
    """A record of a tenant transaction that commits (its copy after the commit runs as the transaction ends)."""
    record = _record(tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.record(record, conn=conn)
    return record


def _waiting(tenant: uuid.UUID, app_pool: ConnectionPool[Any]) -> set[uuid.UUID]:
    with tenant_transaction(tenant, pool=app_pool) as conn:
        return {row["id"] for row in conn.execute("SELECT id FROM app.audit_outbox WHERE refused_at IS NULL")}


def _queued(tenant: uuid.UUID, count: int, app_pool: ConnectionPool[Any]) -> set[uuid.UUID]:
    """`count` records of the tenant queued straight into the outbox, as a store that was down leaves them."""
    ids = [uuid.uuid4() for _ in range(count)]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        for record_id in ids:
            conn.execute(
                "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)",
                (tenant, record_id, Jsonb({"id": str(record_id), "tenantId": str(tenant)})),
            )
    return set(ids)


def test_a_slow_store_holds_the_request_within_the_bound_and_the_relay_copies_later(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # A throttled store that answers at last: the SDK's retries made each audited request wait it out (minutes).
    tenant = new_tenant()
    container = StandInContainer([0.0], tenant)
    container.delay_s[str(tenant)] = 30.0
    store, outbox = _store(container, app_pool, control_pool)
    started = container.now[0]
    first = _committed(store, tenant, app_pool)
    # The copy after the commit gave up within its bound, on the store's clock, and asked the SDK for no retries.
    assert container.now[0] - started <= audit_outbox.INLINE_S
    [(_, options)] = container.calls
    assert 0 < options["timeout"] <= audit_outbox.INLINE_S and options["retry_total"] == 0
    assert options["read_timeout"] <= audit_outbox.INLINE_S and options["connection_timeout"] <= audit_outbox.INLINE_S
    assert _waiting(tenant, app_pool) == {first.id} and container.items == []
    # The tenant's next requests leave their records to the relay at once.
    second = _committed(store, tenant, app_pool)
    assert len(container.calls) == 1
    # The relay copies them with the client's own retries and timeouts, however slowly.
    assert outbox.relay_tenant(tenant) == Copied(2)
    assert container.ids() == {first.id, second.id} and _waiting(tenant, app_pool) == set()
    assert all(options == {} for _, options in container.calls[1:])


def test_a_slow_copy_that_succeeds_pauses_its_tenants_next_copies(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = new_tenant(), new_tenant()
    container = StandInContainer([0.0], tenant, other)
    container.delay_s[str(tenant)] = audit_outbox.INLINE_SLOW_S + 0.1  # within the bound, yet slow
    store, _ = _store(container, app_pool, control_pool)
    first = _committed(store, tenant, app_pool)
    assert container.ids() == {first.id}
    second = _committed(store, tenant, app_pool)
    assert container.ids() == {first.id} and _waiting(tenant, app_pool) == {second.id}
    # Another tenant's copy goes on.
    third = _committed(store, other, app_pool)
    assert third.id in container.ids()
    # Past the pause, the tenant's copies after a commit resume.
    container.now[0] += audit_outbox.COOLDOWN_S
    container.delay_s[str(tenant)] = 0.0
    fourth = _committed(store, tenant, app_pool)
    assert fourth.id in container.ids()


def test_one_tenants_failing_copies_pause_neither_another_tenants_copies_nor_its_relay(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing, healthy = new_tenant(), new_tenant()
    container = StandInContainer([0.0], failing, healthy)
    container.failing[str(failing)] = CosmosHttpResponseError(status_code=503, message="unavailable")
    store, outbox = _store(container, app_pool, control_pool)
    refused = _committed(store, failing, app_pool)
    assert _waiting(failing, app_pool) == {refused.id}
    # The failing tenant's pause is its own: the other's record is copied after its commit.
    copied = _committed(store, healthy, app_pool)
    assert copied.id in container.ids() and _waiting(healthy, app_pool) == set()
    # The relay: the failing tenant's records are the oldest, yet once it has failed a run it is probed (one batch)
    # after the others are served.
    ours = {str(failing), str(healthy)}
    older = _queued(failing, audit_outbox.BATCH + 1, app_pool)
    _queued(healthy, 1, app_pool)
    outbox.relay()
    container.calls.clear()
    later = _queued(healthy, 2, app_pool)
    with caplog.at_level(logging.ERROR, logger="shared.audit.outbox"):
        for _ in range(audit_outbox.FAILING_RUNS_ERROR - 1):
            result = outbox.relay()
            assert result.failed_tenants >= 1
    order = [tenant for tenant, _ in container.calls if tenant in ours]
    assert order[0] == str(healthy) and str(failing) in order
    assert later <= container.ids() and _waiting(healthy, app_pool) == set()
    assert {refused.id, *older} == _waiting(failing, app_pool)
    # Still failing after as many runs in a row, it is named at ERROR for an operator.
    assert any(str(failing) in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    # The healthy tenant's copies after a commit were never paused.
    again = _committed(store, healthy, app_pool)
    assert again.id in container.ids()


def test_a_store_that_refuses_every_record_alike_is_at_fault_and_the_records_wait(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # A container that does not match the code answers 400 for every document: they were all set aside for good.
    tenant = new_tenant()
    container = StandInContainer([0.0], tenant)
    container.failing[str(tenant)] = CosmosHttpResponseError(status_code=400, message="wrong partition key")
    _, outbox = _store(container, app_pool, control_pool)
    queued = _queued(tenant, 3, app_pool)
    with pytest.raises(Exception) as raised:
        outbox.relay_tenant(tenant)
    assert isinstance(raised.value, audit_outbox.StoreFaultError)
    assert _waiting(tenant, app_pool) == queued
    # The store mended, they all go.
    del container.failing[str(tenant)]
    assert outbox.relay_tenant(tenant) == Copied(3)
    assert container.ids() == queued
