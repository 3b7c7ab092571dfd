# intent_ref: platform.audit
"""The audit outbox's copy after a commit is bounded and paused per tenant (ADR 0012, amended 2026-12-07): it runs in
the request, so a slow store costs that request at most `INLINE_S` and no SDK retries, and the relay copies what it
left, and it goes through a client that sleeps no throttled write's retry-after; one tenant's failing copies pause that
tenant's alone, a successful relay copy lifts its pause, and the relay serves the others before probing it with one
batch; a store that refuses every record of a batch alike is taken to be at fault and the records wait, unless it
refused one record alike in as many copies while it took others."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import pytest
from azure.core.pipeline.transport import HttpRequest, HttpResponse, HttpTransport
from azure.cosmos import CosmosClient, _retry_utility
from azure.cosmos.exceptions import CosmosClientTimeoutError, CosmosHttpResponseError
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.audit import AuditRecord
from shared.audit import outbox as audit_outbox
from shared.audit.cosmos import CosmosAuditStore, inline_connection_policy
from shared.audit.outbox import AuditOutbox, Copied, Delete, Write
from shared.db.session import tenant_transaction
from tests.cosmos_emulator import COSMOS_EMULATOR_KEY

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
        self.refusing: dict[str, Exception] = {}
        """Per record id, what the store answers that record alone."""

    def create_item(self, body: dict[str, Any], **options: Any) -> None:
        tenant = body["tenantId"]
        if tenant not in self.tenants:
            raise ConnectionError("another test's record: left where it is")
        self.calls.append((tenant, options))
        if tenant in self.failing:
            raise self.failing[tenant]
        if body["id"] in self.refusing:
            raise self.refusing[body["id"]]
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


def _set_aside(tenant: uuid.UUID, app_pool: ConnectionPool[Any]) -> set[uuid.UUID]:
    with tenant_transaction(tenant, pool=app_pool) as conn:
        return {row["id"] for row in conn.execute("SELECT id FROM app.audit_outbox WHERE refused_at IS NOT NULL")}


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
    # The SDK bounds the connect by what is left of `timeout`, the wait for the answer by `read_timeout` alone: the two
    # together fit in the budget.
    assert options["connection_timeout"] + options["read_timeout"] <= options["timeout"]
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


def test_a_successful_relay_copy_lifts_its_tenants_pause(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    container = StandInContainer([0.0], tenant)
    container.failing[str(tenant)] = CosmosHttpResponseError(status_code=503, message="unavailable")
    store, outbox = _store(container, app_pool, control_pool)
    first = _committed(store, tenant, app_pool)
    del container.failing[str(tenant)]
    # Paused: the next record is left to the relay.
    second = _committed(store, tenant, app_pool)
    assert container.ids() == set() and _waiting(tenant, app_pool) == {first.id, second.id}
    # The relay copies them: the store serves the tenant again, and its pause is lifted at once, not after
    # COOLDOWN_S (the clock has not moved).
    outbox.relay()
    assert container.ids() == {first.id, second.id}
    third = _committed(store, tenant, app_pool)
    assert third.id in container.ids() and _waiting(tenant, app_pool) == set()


def test_a_tenant_that_failed_a_run_is_probed_with_one_batch_then_served_in_full(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    container = StandInContainer([0.0], tenant)
    container.failing[str(tenant)] = CosmosHttpResponseError(status_code=503, message="unavailable")
    _, outbox = _store(container, app_pool, control_pool)
    queued = _queued(tenant, 2 * audit_outbox.BATCH + 1, app_pool)
    outbox.relay()
    assert _waiting(tenant, app_pool) == queued
    del container.failing[str(tenant)]
    # The run after its failure probes it with a single batch, whatever waits.
    outbox.relay()
    assert len(container.ids() & queued) == audit_outbox.BATCH
    assert len(_waiting(tenant, app_pool)) == audit_outbox.BATCH + 1
    # The probe succeeded: the next run serves it in full.
    outbox.relay()
    assert container.ids() >= queued and _waiting(tenant, app_pool) == set()


def test_a_record_refused_alike_alone_goes_aside_once_the_store_takes_others(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # A genuinely malformed record alone in its batch was taken for the store's fault every run: it waited forever.
    tenant, other = new_tenant(), new_tenant()
    container = StandInContainer([0.0], tenant, other)
    store, outbox = _store(container, app_pool, control_pool)
    [malformed] = _queued(tenant, 1, app_pool)
    container.refusing[str(malformed)] = CosmosHttpResponseError(status_code=400, message="malformed document")
    # While the store takes nothing else, however often, it may be the store's fault: the record waits.
    for _ in range(audit_outbox.DOUBTFUL_TRIES_ASIDE + 1):
        with pytest.raises(audit_outbox.StoreFaultError):
            outbox.relay_tenant(tenant)
    assert _waiting(tenant, app_pool) == {malformed} and _set_aside(tenant, app_pool) == set()
    # The store takes another record: the one it refused alike in as many copies is the record's fault.
    taken = _committed(store, other, app_pool)
    assert taken.id in container.ids()
    assert outbox.relay_tenant(tenant) == Copied(0, 1)
    assert _waiting(tenant, app_pool) == set() and _set_aside(tenant, app_pool) == {malformed}


def test_a_record_refused_alike_fewer_times_waits_though_the_store_takes_others(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = new_tenant(), new_tenant()
    container = StandInContainer([0.0], tenant, other)
    store, outbox = _store(container, app_pool, control_pool)
    [malformed] = _queued(tenant, 1, app_pool)
    container.refusing[str(malformed)] = CosmosHttpResponseError(status_code=400, message="malformed document")
    for _ in range(audit_outbox.DOUBTFUL_TRIES_ASIDE - 1):
        with pytest.raises(audit_outbox.StoreFaultError):
            outbox.relay_tenant(tenant)
        _committed(store, other, app_pool)
    assert _waiting(tenant, app_pool) == {malformed}
    # The store mended for it, it goes to the store after all.
    del container.refusing[str(malformed)]
    assert outbox.relay_tenant(tenant) == Copied(1)


_ENDPOINT = "https://audit.invalid:8081/"


class _Answer(HttpResponse):
    def __init__(self, request: HttpRequest, status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
        super().__init__(request, None)
        self.status_code = status
        self.headers = {"content-type": "application/json", **headers}
        self.reason = "stand-in"
        self.content_type = "application/json"
        self._body = json.dumps(body).encode()

    def body(self) -> bytes:
        return self._body


_CONTAINER_PATH = "/dbs/quantum/colls/audit"
_DOCS_PATH = _CONTAINER_PATH + "/docs"
_THROTTLED = (429, {"x-ms-retry-after-ms": "8000", "x-ms-substatus": "3200"}, {"code": "TooManyRequests"})
_UNAVAILABLE = (503, {}, {"code": "ServiceUnavailable", "message": "unavailable"})


class StandInService(HttpTransport):  # type: ignore[type-arg]
    """The Cosmos DB service at the SDK's pipeline: it answers the account's read and the audit container's properties
    (which a client reads before its first write), and each write (a POST to the container's documents) with the
    next of `answers` (status, headers, body), the last one again once they run out; it takes the document on a 2xx.
    Every request and its answer is in `seen` (method, path, status)."""

    def __init__(self, *answers: tuple[int, dict[str, str], dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, str, int]] = []

    def __enter__(self) -> StandInService:
        return self

    def __exit__(self, *_args: object) -> None:
        return None

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def send(self, request: HttpRequest, **_kwargs: Any) -> HttpResponse:
        path = urlparse(request.url).path.rstrip("/")
        if request.method == "GET" and path == "":
            location = [{"name": "local", "databaseAccountEndpoint": _ENDPOINT}]
            account = {
                "id": "account",
                "writableLocations": location,
                "readableLocations": location,
                "userConsistencyPolicy": {"defaultConsistencyLevel": "Session"},
                "enableMultipleWriteLocations": False,
            }
            return self._answer(request, path, 200, {}, account)
        if request.method == "GET" and path == _CONTAINER_PATH:
            properties = {
                "id": "audit",
                "_rid": "cXVhbnR1bQ==",
                "_self": "dbs/cXVhbg==/colls/cXVhbnR1bQ==/",
                "partitionKey": {"paths": ["/tenantId"], "kind": "Hash", "version": 2},
            }
            return self._answer(request, path, 200, {}, properties)
        if request.method == "POST" and path == _DOCS_PATH:
            status, headers, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if 200 <= status < 300:
                body = json.loads(request.body)
            return self._answer(request, path, status, headers, body)
        return self._answer(request, path, 404, {}, {"code": "NotFound"})

    def _answer(
        self, request: HttpRequest, path: str, status: int, headers: dict[str, str], body: dict[str, Any]
    ) -> HttpResponse:
        self.seen.append((request.method, path, status))
        return _Answer(request, status, headers, body)

    def posts(self) -> list[int]:
        """The statuses the writes were answered with, in order."""
        return [status for method, path, status in self.seen if (method, path) == ("POST", _DOCS_PATH)]


class _Sleeps:
    """The SDK's `time` module with its sleeps recorded, not slept."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _stand_in_store(
    service: StandInService, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> tuple[CosmosAuditStore, AuditOutbox]:
    """The Cosmos DB store on `service`: the relay's client as the factory builds it, the copies' after a commit with
    `inline_connection_policy`."""

    def container(**options: Any) -> Any:
        client = CosmosClient(_ENDPOINT, credential=COSMOS_EMULATOR_KEY, transport=service, **options)
        return client.get_database_client("quantum").get_container_client("audit")

    outboxes: list[AuditOutbox] = []

    def outbox(write: Write, delete: Delete) -> AuditOutbox:
        outboxes.append(AuditOutbox(write, delete, pool=app_pool, control_pool=control_pool))
        return outboxes[0]

    store = CosmosAuditStore(
        container(), outbox=outbox, inline_container=container(connection_policy=inline_connection_policy())
    )
    return store, outboxes[0]


def test_a_throttled_write_after_a_commit_sleeps_no_retry_after(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The SDK looks at the call's timeout before a throttling retry's sleep, then sleeps the service's whole
    # retry-after: a 429 asking 8 s held the request 8 s past its 1 s bound.
    sleeps = _Sleeps()
    monkeypatch.setattr(_retry_utility, "time", sleeps)
    service = StandInService(_THROTTLED)
    store, outbox = _stand_in_store(service, app_pool, control_pool)
    tenant = new_tenant()
    record = _committed(store, tenant, app_pool)
    # The copy after the commit read the container and sent the document once; the 429 answered that write, and
    # nothing was slept: the relay takes the record.
    assert [(method, path, status) for method, path, status in service.seen if path] == [
        ("GET", _CONTAINER_PATH, 200),
        ("POST", _DOCS_PATH, 429),
    ]
    assert sleeps.slept == []
    assert _waiting(tenant, app_pool) == {record.id}
    # The relay's client does wait out the service's retry-after on the write (the stand-in throttles as the service
    # does), and gives up after its retries.
    with pytest.raises(CosmosHttpResponseError):
        outbox.relay_tenant(tenant)
    assert sleeps.slept and sleeps.slept[0] == 8.0
    # Each of its sleeps was before a write again, all throttled.
    assert service.posts() == [429] * (1 + 1 + len(sleeps.slept))


def test_an_unavailable_store_after_a_commit_is_written_to_once(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With endpoint discovery on, the SDK retried a 503 after a fixed 0.5 s sleep (looking at the call's timeout
    # before the sleep only), and the retry had the whole read timeout again: the copy took 1.3 to 1.4 s of its 1 s.
    sleeps = _Sleeps()
    monkeypatch.setattr(_retry_utility, "time", sleeps)
    created = (201, {}, {})
    service = StandInService(_UNAVAILABLE, created)
    store, outbox = _stand_in_store(service, app_pool, control_pool)
    tenant = new_tenant()
    record = _committed(store, tenant, app_pool)
    # One write, answered 503 and raised at once: nothing slept, though the store would have taken a retry.
    assert service.posts() == [503] and sleeps.slept == []
    assert _waiting(tenant, app_pool) == {record.id}
    # The relay's client keeps the SDK's failover: it retries a 503 and copies the record.
    service.answers = [_UNAVAILABLE, created]
    assert outbox.relay_tenant(tenant) == Copied(1)
    assert service.posts() == [503, 503, 201] and sleeps.slept == [0.5]
    assert _waiting(tenant, app_pool) == set()
