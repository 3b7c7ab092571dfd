# intent_ref: platform.audit
"""Both audit stores through one suite: round trip, filters, pagination, tenant scoping, append-only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from azure.cosmos import ContainerProxy, DatabaseProxy
from azure.cosmos.exceptions import CosmosResourceExistsError
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from shared import pagination
from shared.audit import AuditQuery, AuditRecord, AuditStore, InvalidCursorError
from shared.audit.cosmos import CosmosAuditStore, create_audit_container
from shared.audit.cosmos import _document as cosmos_document
from shared.audit.postgres import PostgresAuditStore
from shared.config import Settings
from shared.db.session import runtime_transaction, tenant_transaction

pytestmark = [
    pytest.mark.integration,
    # The Cosmos fake serves a self-signed certificate; verification is off for it in tests only.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

T0 = datetime(2030, 1, 1, tzinfo=UTC)
_SETTINGS = {"QP_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true", "QP_DATABASE_CONTROL_URL": "x"}


@pytest.fixture(scope="module")
def audit_container(cosmos_database: DatabaseProxy) -> ContainerProxy:
    return create_audit_container(cosmos_database, f"audit-{uuid.uuid4().hex[:8]}")


@dataclass
class Backend:
    kind: str
    store: AuditStore
    # Every query_items call the Cosmos store sent (text, parameters, partition_key); empty for Postgres.
    cosmos_queries: list[tuple[str, dict[str, object], object]] = field(default_factory=list)


@pytest.fixture(params=["postgres", "cosmos"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if request.param == "postgres":
        # The process-wide pools: records go through the app's login, the erasure through the control plane's.
        request.getfixturevalue("process_pools")
        yield Backend("postgres", PostgresAuditStore())
        return
    # Records go through the audit outbox in Postgres (ADR 0012), through the process-wide pools.
    request.getfixturevalue("process_pools")
    container: ContainerProxy = request.getfixturevalue("audit_container")
    calls: list[tuple[str, dict[str, object], object]] = []
    real_query_items = container.query_items

    def spy(query: str, *args: Any, **kwargs: Any) -> Any:
        params = {p["name"]: p["value"] for p in kwargs.get("parameters") or []}
        calls.append((query, params, kwargs.get("partition_key")))
        return real_query_items(query, *args, **kwargs)

    # The fake ignores the partition key (a query leaks other partitions), so isolation is proven on
    # what we send: every query must carry the partition key and the tenant predicate, for one tenant.
    monkeypatch.setattr(container, "query_items", spy)
    backend = Backend("cosmos", CosmosAuditStore(container), calls)
    yield backend
    for text, params, partition_key in calls:
        assert "WHERE c.tenantId = @tenantId" in text
        assert partition_key is not None and partition_key == params["@tenantId"]
        assert "OFFSET" not in text.upper()


def _record(tenant: uuid.UUID, i: int, **overrides: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "tenant_id": tenant,
        "principal_id": f"{tenant}/user-{i % 3}",
        "action": ("intent.create", "intent.update", "execution.start")[i % 3],
        "resource_type": "intent" if i % 3 != 2 else "execution",
        "resource_id": f"res-{i % 4}",
        "decision": "deny" if i % 5 == 0 else "allow",
        "reason": "policy" if i % 5 == 0 else "",
        "request_id": f"req-{i}",
        "occurred_at": T0 + timedelta(seconds=i // 2),  # pairs share a timestamp: the id breaks the tie
        "detail": {"i": i, "nested": {"ok": True}},
    }
    values.update(overrides)
    return AuditRecord(**values)


def _seed(store: AuditStore, tenant: uuid.UUID, count: int) -> list[AuditRecord]:
    records = [_record(tenant, i) for i in range(count)]
    for record in records:
        store.record(record)
    return records


def _newest_first(records: list[AuditRecord], kind: str) -> list[AuditRecord]:
    # Ties on time are broken by id, descending: Postgres compares uuids by bytes, Cosmos by string; for
    # canonical lowercase hex both orders agree.
    return sorted(records, key=lambda r: (r.occurred_at, str(r.id)), reverse=True)


def _all_pages(store: AuditStore, q: AuditQuery) -> tuple[list[AuditRecord], int]:
    items: list[AuditRecord] = []
    pages = 0
    while True:
        page = store.query(q)
        pages += 1
        assert len(page.items) <= q.limit
        items.extend(page.items)
        if page.next_cursor is None:
            return items, pages
        assert pages < 100, "pagination does not terminate"
        q = replace(q, cursor=page.next_cursor)


def test_record_and_query_back(backend: Backend, new_tenant: Callable[[], uuid.UUID]) -> None:
    tenant = new_tenant()
    record = _record(tenant, 1, detail={"before": {"name": "x"}, "after": {"name": "y"}, "n": [1, 2]})
    backend.store.record(record)
    page = backend.store.query(AuditQuery(tenant_id=tenant))
    assert page.items == [record]
    assert page.next_cursor is None


def test_filters_select_exactly_the_matching_records(backend: Backend, new_tenant: Callable[[], uuid.UUID]) -> None:
    tenant = new_tenant()
    records = _seed(backend.store, tenant, 20)
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"action": "intent.update"}, lambda r: r.action == "intent.update"),
        ({"decision": "deny"}, lambda r: r.decision == "deny"),
        ({"principal_id": f"{tenant}/user-2"}, lambda r: r.principal_id == f"{tenant}/user-2"),
        ({"resource_type": "execution"}, lambda r: r.resource_type == "execution"),
        ({"resource_id": "res-3"}, lambda r: r.resource_id == "res-3"),
        ({"since": T0 + timedelta(seconds=3)}, lambda r: r.occurred_at >= T0 + timedelta(seconds=3)),
        ({"until": T0 + timedelta(seconds=3)}, lambda r: r.occurred_at < T0 + timedelta(seconds=3)),
        (
            {
                "action": "intent.create",
                "decision": "allow",
                "since": T0 + timedelta(seconds=2),
                "until": T0 + timedelta(seconds=8),
            },
            lambda r: (
                r.action == "intent.create"
                and r.decision == "allow"
                and T0 + timedelta(seconds=2) <= r.occurred_at < T0 + timedelta(seconds=8)
            ),
        ),
        ({"action": "no.such.action"}, lambda r: False),
    ]
    for filters, matches in cases:
        expected = _newest_first([r for r in records if matches(r)], backend.kind)
        got, _ = _all_pages(backend.store, AuditQuery(tenant_id=tenant, limit=1000, **filters))
        assert got == expected, filters
        if filters != {"action": "no.such.action"}:
            assert 0 < len(expected) < len(records), f"case {filters} does not discriminate"


def test_cursor_pages_have_no_duplicates_or_gaps(backend: Backend, new_tenant: Callable[[], uuid.UUID]) -> None:
    tenant = new_tenant()
    records = _seed(backend.store, tenant, 23)
    got, pages = _all_pages(backend.store, AuditQuery(tenant_id=tenant, limit=5))
    assert pages == 5
    assert [r.id for r in got] == [r.id for r in _newest_first(records, backend.kind)]
    # Paging a filtered query keeps the filter on every page.
    denied, _ = _all_pages(backend.store, AuditQuery(tenant_id=tenant, decision="deny", limit=2))
    assert [r.id for r in denied] == [r.id for r in _newest_first(records, backend.kind) if r.decision == "deny"]


def test_records_added_between_pages_do_not_shift_the_next_page(
    backend: Backend, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    records = _seed(backend.store, tenant, 6)
    first = backend.store.query(AuditQuery(tenant_id=tenant, limit=3))
    # A newer record arrives while the client is paging: it belongs before page one, not into page two.
    backend.store.record(_record(tenant, 99, occurred_at=T0 + timedelta(days=1)))
    second = backend.store.query(AuditQuery(tenant_id=tenant, limit=3, cursor=first.next_cursor))
    expected = _newest_first(records, backend.kind)
    assert [r.id for r in [*first.items, *second.items]] == [r.id for r in expected]


def test_a_cursor_only_works_for_the_query_that_issued_it(
    backend: Backend, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = new_tenant(), new_tenant()
    _seed(backend.store, tenant, 4)
    page = backend.store.query(AuditQuery(tenant_id=tenant, limit=2))
    assert page.next_cursor is not None
    for q in (
        AuditQuery(tenant_id=other, limit=2, cursor=page.next_cursor),
        AuditQuery(tenant_id=tenant, limit=2, action="intent.create", cursor=page.next_cursor),
        AuditQuery(tenant_id=tenant, limit=2, cursor="not-a-cursor"),
        AuditQuery(tenant_id=tenant, limit=2, cursor=page.next_cursor[:-4]),
    ):
        with pytest.raises(InvalidCursorError):
            backend.store.query(q)


def test_a_tenant_never_sees_another_tenants_records(backend: Backend, new_tenant: Callable[[], uuid.UUID]) -> None:
    tenant_a, tenant_b = new_tenant(), new_tenant()
    records_a = _seed(backend.store, tenant_a, 5)
    records_b = _seed(backend.store, tenant_b, 5)
    # Same principal, resource and request ids in both tenants: only the tenant can tell them apart.
    shared_filters: list[dict[str, Any]] = [{}, {"resource_id": "res-1"}, {"action": "intent.create"}]
    for filters in shared_filters:
        backend.cosmos_queries.clear()
        got_a, _ = _all_pages(backend.store, AuditQuery(tenant_id=tenant_a, limit=2, **filters))
        assert got_a and {r.tenant_id for r in got_a} == {tenant_a}
        assert {r.id for r in got_a} <= {r.id for r in records_a}
        if backend.kind == "cosmos":
            assert backend.cosmos_queries, "the store sent no query"
            for text, params, partition_key in backend.cosmos_queries:
                assert partition_key == str(tenant_a)
                assert params["@tenantId"] == str(tenant_a)
                assert "c.tenantId = @tenantId" in text
    got_b, _ = _all_pages(backend.store, AuditQuery(tenant_id=tenant_b, limit=1000))
    assert {r.id for r in got_b} == {r.id for r in records_b}


def test_a_record_is_never_overwritten(backend: Backend, new_tenant: Callable[[], uuid.UUID]) -> None:
    tenant = new_tenant()
    original = _record(tenant, 1)
    backend.store.record(original)
    tampered = replace(original, decision="allow", reason="rewritten")
    if backend.kind == "postgres":
        with pytest.raises(psycopg.errors.UniqueViolation):
            backend.store.record(tampered)
    else:
        # Through the outbox the write happens after the caller's commit, so it cannot refuse the caller: the
        # store keeps the first document by its id and the second copy is dropped (ADR 0012).
        backend.store.record(tampered)
        with pytest.raises(CosmosResourceExistsError):
            backend.store._container.create_item(cosmos_document(tampered))  # type: ignore[attr-defined]
    assert backend.store.query(AuditQuery(tenant_id=tenant)).items == [original]


def test_runtime_role_cannot_update_delete_or_truncate(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    store = PostgresAuditStore(app_pool)
    record = _record(tenant, 1)
    store.record(record)
    for statement in (
        "UPDATE app.audit_events SET decision = 'allow', reason = 'x'",
        "DELETE FROM app.audit_events",
        "TRUNCATE app.audit_events",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with tenant_transaction(tenant, pool=app_pool) as conn:
                conn.execute(statement)  # type: ignore[arg-type]
    assert store.query(AuditQuery(tenant_id=tenant)).items == [record]


def test_postgres_records_are_invisible_without_a_tenant_and_refused_for_another(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant_a, tenant_b = new_tenant(), new_tenant()
    store = PostgresAuditStore(app_pool)
    store.record(_record(tenant_a, 1))
    with runtime_transaction(pool=app_pool) as conn:
        assert conn.execute("SELECT count(*) AS n FROM app.audit_events").fetchone()["n"] == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        with tenant_transaction(tenant_a, pool=app_pool) as conn:
            store.record_in(conn, _record(tenant_b, 2))
    assert store.query(AuditQuery(tenant_id=tenant_b)).items == []


def test_record_in_commits_and_rolls_back_with_the_callers_transaction(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    store = PostgresAuditStore(app_pool)
    kept, dropped = _record(tenant, 1), _record(tenant, 2)

    class Boom(Exception):
        pass

    kept_too, dropped_too = _record(tenant, 3), _record(tenant, 4)
    with pytest.raises(Boom):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            store.record_in(conn, dropped)
            store.record(dropped_too, conn=conn)
            raise Boom  # the mutation failed after its audit records were written
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.record_in(conn, kept)
        store.record(kept_too, conn=conn)
    assert {r.id for r in store.query(AuditQuery(tenant_id=tenant)).items} == {kept.id, kept_too.id}


@pytest.mark.usefixtures("process_pools")  # the records go through the audit outbox
def test_cosmos_documents_carry_the_tenants_retention_as_ttl(
    audit_container: ContainerProxy, new_tenant: Callable[[], uuid.UUID]
) -> None:
    keeps, expires = new_tenant(), new_tenant()
    store = CosmosAuditStore(audit_container, retention_days=lambda t: 120 if t == expires else None)
    with_ttl, without_ttl = _record(expires, 1), _record(keeps, 1)
    store.record(with_ttl)
    store.record(without_ttl)
    doc = audit_container.read_item(str(with_ttl.id), partition_key=str(expires))
    assert doc["ttl"] == 120 * 86400 and doc["tenantId"] == str(expires)
    assert "ttl" not in audit_container.read_item(str(without_ttl.id), partition_key=str(keeps))
    container = audit_container.read()
    assert container["partitionKey"]["paths"] == ["/tenantId"]
    assert container["defaultTtl"] == -1  # per-item ttl only takes effect when the container enables TTL


def test_cosmos_backend_requires_an_endpoint() -> None:
    with pytest.raises(ValidationError, match="QP_COSMOS_ENDPOINT"):
        Settings(QP_DATABASE_URL="x", QP_AUDIT_BACKEND="cosmos", **_SETTINGS)
    with pytest.raises(ValidationError, match="https"):
        Settings(QP_DATABASE_URL="x", QP_AUDIT_BACKEND="cosmos", QP_COSMOS_ENDPOINT="http://x", **_SETTINGS)
    ok = Settings(
        QP_DATABASE_URL="x",
        QP_AUDIT_BACKEND="cosmos",
        QP_COSMOS_ENDPOINT="https://acct.documents.azure.com:443/",
        **_SETTINGS,
    )
    assert ok.QP_COSMOS_AUDIT_CONTAINER == "audit"


def test_query_arguments_are_validated() -> None:
    tenant = uuid.uuid4()
    for bad in ({"limit": 0}, {"limit": 1001}, {"decision": "maybe"}, {"since": datetime(2030, 1, 1)}):
        with pytest.raises(ValueError):
            AuditQuery(tenant_id=tenant, **bad)
    with pytest.raises(ValueError):
        _record(tenant, 1, decision="perhaps")
    with pytest.raises(ValueError):
        _record(tenant, 1, occurred_at=datetime(2030, 1, 1))


def test_a_bad_cursor_is_the_gateways_invalid_cursor_error(
    backend: Backend, new_tenant: Callable[[], uuid.UUID]
) -> None:
    # The gateway maps shared.pagination.InvalidCursorError to 400; the stores' error must be one.
    with pytest.raises(pagination.InvalidCursorError):
        backend.store.query(AuditQuery(tenant_id=uuid.uuid4(), cursor="eyJ2IjoxfQ"))


@pytest.mark.usefixtures("process_pools")  # the records go through the audit outbox
def test_a_cosmos_cursor_with_an_edited_service_token_is_an_invalid_cursor(
    audit_container: ContainerProxy, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    store = CosmosAuditStore(audit_container)
    _seed(store, tenant, 4)
    q = AuditQuery(tenant_id=tenant, limit=2)
    issued = store.query(q).next_cursor
    assert issued is not None
    # A cursor is only encoded: a caller can keep its query's fingerprint and change the service's continuation token.
    # The Cosmos fake answers 400 to this one, as the service does to a token it cannot read.
    payload = pagination.decode_cursor(issued)
    assert payload is not None and set(payload["p"]) == {"c"}
    edited = pagination.encode_cursor({**payload, "p": {"c": "-1"}})
    with pytest.raises(InvalidCursorError):
        store.query(replace(q, cursor=edited))
    assert len(store.query(replace(q, cursor=issued)).items) == 2  # the cursor as issued still reads on


def test_public_form_is_json_ready() -> None:
    record = AuditRecord.new(
        tenant_id=uuid.uuid4(),
        principal_id="t/o",
        action="intent.create",
        resource_type="intent",
        resource_id=None,
        decision="allow",
        detail={"k": [1]},
    )
    public = record.to_public()
    assert json.loads(json.dumps(public)) == public
    assert public["id"] == str(record.id) and public["occurred_at"] == record.occurred_at.isoformat()
    assert (
        AuditRecord.new(
            tenant_id=record.tenant_id,
            principal_id="t/o",
            action="a",
            resource_type="r",
            resource_id=None,
            decision="deny",
        ).id
        != record.id
    )


def test_erase_removes_exactly_one_tenants_records(backend: Backend, new_tenant: Callable[[], uuid.UUID]) -> None:
    tenant_a, tenant_b = new_tenant(), new_tenant()
    _seed(backend.store, tenant_a, 4)
    records_b = _seed(backend.store, tenant_b, 3)
    backend.cosmos_queries.clear()
    assert backend.store.erase(tenant_a) == 4
    if backend.kind == "cosmos":
        for text, params, partition_key in backend.cosmos_queries:
            assert partition_key == str(tenant_a) and params["@tenantId"] == str(tenant_a)
            assert "c.tenantId = @tenantId" in text
    assert _all_pages(backend.store, AuditQuery(tenant_id=tenant_a, limit=1000))[0] == []
    got_b, _ = _all_pages(backend.store, AuditQuery(tenant_id=tenant_b, limit=1000))
    assert {r.id for r in got_b} == {r.id for r in records_b}
    assert backend.store.erase(tenant_a) == 0


@pytest.mark.usefixtures("process_pools")
def test_a_retention_longer_than_cosmos_takes_keeps_the_records_as_long_as_it_can(
    audit_container: ContainerProxy, new_tenant: Callable[[], uuid.UUID]
) -> None:
    # A tenant may set any number of days; Cosmos DB refuses a ttl past 2^31 - 1 s, so every audit write failed.
    tenant = new_tenant()
    store = CosmosAuditStore(audit_container, retention_days=lambda _: 9_223_372_036_854_775_807)
    record = _record(tenant, 1)
    store.record(record)
    assert audit_container.read_item(str(record.id), partition_key=str(tenant))["ttl"] == 2**31 - 1
