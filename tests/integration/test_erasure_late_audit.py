# intent_ref: platform.audit
"""An audit record racing its tenant's erasure leaves nothing in the trail but the erasure's own record: the record
holds the tenant row as a foreign key would, so the erasure waits for it or it waits for the erasure and is refused
(migration 0060), and its request is answered as one of a tenant that does not exist, as today."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.api.problems import error_response
from shared.audit import AuditRecord
from shared.audit.postgres import PostgresAuditStore
from shared.db.session import platform_transaction, tenant_transaction
from shared.tenants.offboarding import TENANT_TABLES
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.lock_waits import until_done_or_waiting
from tests.integration.test_erase_launch_race import durable as durable  # noqa: F401  # the fixture
from tests.integration.test_erase_races import _erase
from tests.integration.test_offboarding import _tenant_row_counts

pytestmark = pytest.mark.integration

ADMIN = ["Tenant.Admin"]


def _record(tenant_id: uuid.UUID, action: str = "intent.update") -> AuditRecord:
    return AuditRecord.new(
        tenant_id=tenant_id,
        principal_id="t/o",
        action=action,
        resource_type="Intent",
        resource_id="i-1",
        decision="allow",
        reason="test",
        request_id="r-1",
        detail={},
        occurred_at=datetime.now(UTC),
    )


def _queue_in_outbox(conn: psycopg.Connection[Any], record: AuditRecord) -> None:
    """The outbox's queueing statement (a store that cannot join the caller's transaction, ADR 0012)."""
    conn.execute(
        "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)",
        (record.tenant_id, record.id, Jsonb({"id": str(record.id), "tenantId": str(record.tenant_id)})),
    )


def _postgres_store(app_pool: ConnectionPool[Any]) -> Callable[[psycopg.Connection[Any], AuditRecord], None]:
    return PostgresAuditStore(app_pool).record_in


WRITERS: dict[str, Callable[[ConnectionPool[Any]], Callable[[psycopg.Connection[Any], AuditRecord], None]]] = {
    "audit_events": _postgres_store,
    "audit_outbox": lambda _pool: _queue_in_outbox,
}


@pytest.mark.parametrize("table", sorted(WRITERS))
def test_a_record_added_before_the_erasure_and_committed_after_it_does_not_outlive_the_tenant(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
    durable: Any,  # noqa: F811  # the fixture imported above
    table: str,
) -> None:
    # The record's insert passed migration 0041's check (the tenant row was there, as last committed) and took no
    # lock on the tenant row: the erasure did not wait for it, deleted the trail without the uncommitted record, and
    # its commit afterwards left a second record in the erased tenant's trail.
    tenant = api.provision(f"late-{table.replace('_', '-')}", status="suspended")
    write = WRITERS[table](app_pool)
    added, commit = threading.Event(), threading.Event()

    def record() -> None:
        with tenant_transaction(tenant.id, pool=app_pool) as conn:
            write(conn, _record(tenant.id))
            added.set()
            assert commit.wait(60)

    with ThreadPoolExecutor(2) as pool:
        recording = pool.submit(record)
        assert added.wait(30)
        erased = pool.submit(_erase, api, tenant)
        until_done_or_waiting(api.admin_url, erased.done, "qp_control", "SELECT 1 FROM app.tenants")
        commit.set()
        recording.result(60)
        answer = erased.result(120)

    assert answer.status_code == 200, answer.text
    counts = _tenant_row_counts(api, tenant.id)
    assert counts.pop("audit_events") == 1, "a record committed after the erasure outlived its tenant"
    assert set(counts.values()) == {0}, counts
    assert [row["action"] for row in _trail(api, tenant)] == ["tenant.erase"]


def _trail(api: ApiHarness, tenant: TenantHandle) -> list[dict[str, Any]]:
    with psycopg.connect(api.admin_url, dbname="quantum", row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT action FROM app.audit_events WHERE tenant_id = %s", (tenant.id,)).fetchall()


def _erased_while_its_record_waits(
    api: ApiHarness, tenant: TenantHandle, pool: ThreadPoolExecutor, call: Callable[[], httpx.Response]
) -> Future[httpx.Response]:
    """`call`'s answer, sent on `pool` while an erasure holds the tenant's row; once the request waits on that row in
    its audit record's insert (or has answered), the tenant's rows are deleted and the erasure commits."""
    with psycopg.connect(api.admin_url, dbname="quantum") as erasing:
        erasing.execute("SELECT 1 FROM app.tenants WHERE id = %s FOR UPDATE", (tenant.id,))
        answer_of = pool.submit(call)
        until_done_or_waiting(api.admin_url, answer_of.done, "qp_app", "INSERT INTO app.audit_events")
        # Its record waits for the erasure: taken without waiting, it was committed whatever the erasure did next.
        assert not answer_of.done(), answer_of.result().text
        for table in TENANT_TABLES:
            erasing.execute(f"DELETE FROM app.{table} WHERE tenant_id = %s", (tenant.id,))  # noqa: S608
        erasing.execute("DELETE FROM app.tenants WHERE id = %s", (tenant.id,))
        erasing.commit()
    return answer_of


def test_a_read_whose_allow_record_waits_on_the_erasure_is_answered_401_and_leaves_no_record(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    durable: Any,  # noqa: F811  # the fixture imported above
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A read records its allow inside its transaction and adds no other row: its record did not wait on the
    # erasure, so the read answered 200 and its record, committed after the erasure's deletes, outlived the tenant.
    name = "erased-under-a-read"
    tenant = api.provision(name)
    headers = api.headers(name, ADMIN)
    # The tenant's rate bucket is there by now: the read waits on the tenant row in its route, not in its admission.
    warm = api.client.get("/api/v1/policies", headers=headers)
    assert warm.status_code == 200, warm.text
    unknown = api.client.get("/api/v1/policies", headers=api.headers(str(uuid.uuid4()), ADMIN))
    assert unknown.status_code == 401, unknown.text

    with ThreadPoolExecutor(1) as pool, caplog.at_level(logging.INFO):
        answer = _erased_while_its_record_waits(
            api, tenant, pool, lambda: api.client.get("/api/v1/policies", headers=headers)
        ).result(60)

    counts = _tenant_row_counts(api, tenant.id)
    assert counts["audit_events"] == 0, "the read's allow record outlived its tenant"
    assert set(counts.values()) == {0}, counts
    assert answer.status_code == 401, answer.text
    assert answer.json() == unknown.json()
    assert answer.headers["www-authenticate"] == unknown.headers["www-authenticate"]
    # The record's own refusal is the request's failure (a decision record's failure is raised, ADR 0017), answered
    # as the erased tenant's and told at WARNING, as every request an erasure cut short; nothing else failed.
    assert [r.getMessage() for r in caplog.records if r.name == "shared.db.session"] == []
    assert any(
        r.name == "shared.api.problems" and r.levelno == logging.WARNING and "erased meanwhile" in r.getMessage()
        for r in caplog.records
    )


def test_a_suspended_tenants_deny_record_waiting_on_the_erasure_is_dropped_and_the_request_refused_403(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    durable: Any,  # noqa: F811  # the fixture imported above
) -> None:
    # The deny record is written in a short transaction of its own (the refusal rolls back the request's): it did not
    # wait on the erasure and stayed in the erased tenant's trail. It is dropped now, the caller refused as before.
    name = "erased-under-a-deny"
    tenant = api.provision(name, status="suspended")
    headers = api.headers(name, ["Intent.Reader"])
    warm = api.client.get("/api/v1/intents", headers=headers)
    assert warm.status_code == 403, warm.text

    with ThreadPoolExecutor(1) as pool:
        answer = _erased_while_its_record_waits(
            api, tenant, pool, lambda: api.client.get("/api/v1/intents", headers=headers)
        ).result(60)

    counts = _tenant_row_counts(api, tenant.id)
    assert counts["audit_events"] == 0, "the deny record outlived its tenant"
    assert set(counts.values()) == {0}, counts
    assert answer.status_code == 403, answer.text
    assert answer.json()["type"] == warm.json()["type"]


def test_only_a_record_refused_for_its_gone_tenant_is_answered_as_an_unknown_tenants(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # The audit check's refusal is mapped to 401 by the constraint it names; any other refusal of the runtime role in
    # the transaction of a tenant that is gone (a grant it lacks) is a bug, answered 500.
    tenant = new_tenant()
    with platform_transaction(pool=control_pool) as conn:
        conn.execute("DELETE FROM app.tenants WHERE id = %s", (tenant,))

    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security") as refused:
        with tenant_transaction(tenant, pool=app_pool) as conn:
            PostgresAuditStore(app_pool).record_in(conn, _record(tenant))
    assert refused.value.diag.constraint_name == "audit_events_needs_its_tenant"
    assert error_response(refused.value, instance="/r", request_id="r-1").status_code == 401

    with pytest.raises(psycopg.errors.InsufficientPrivilege) as other:
        with tenant_transaction(tenant, pool=app_pool) as conn:
            conn.execute("DELETE FROM app.audit_events")
    assert error_response(other.value, instance="/r", request_id="r-2").status_code == 500
