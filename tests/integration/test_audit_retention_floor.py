# intent_ref: platform.audit
"""A tenant's audit retention has a platform floor (ADR 0012, amended 2026-12-07): a Tenant.Admin cannot set it
below 90 days (nor to anything but a whole number of days within the bounds), and a value stored before the floor
existed is raised to it when a record's time to live is computed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from azure.cosmos import ContainerProxy, DatabaseProxy
from psycopg.types.json import Jsonb

from shared.audit import AuditRecord
from shared.audit.cosmos import CosmosAuditStore, create_audit_container
from shared.audit.factory import _TenantRetention
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = [
    pytest.mark.integration,
    # The Cosmos fake serves a self-signed certificate; verification is off for it in tests only.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

# The documented bounds, written out: the contract the API states, not whatever the code's constants say.
FLOOR_DAYS = 90
CEILING_DAYS = 24855  # the whole days in Cosmos DB's longest per-item time to live, 2^31 - 1 s
POINTER = "/settings/audit_retention_days"
TENANT_ADMIN = ["Tenant.Admin"]


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("retention-floor")


def _patch(api: ApiHarness, settings: dict[str, Any]) -> Any:
    headers = api.headers("retention-floor", TENANT_ADMIN)
    return api.client.patch("/api/v1/tenant", json={"settings": settings}, headers=headers)


@pytest.mark.parametrize("days", [1, 0, -30, FLOOR_DAYS - 1, CEILING_DAYS + 1, True, 1.5, 90.0, "30", [90], {"d": 90}])
def test_a_retention_outside_the_bounds_or_not_whole_days_is_422_and_nothing_is_stored(
    api: ApiHarness, days: Any
) -> None:
    before = api.table_snapshot("tenants")
    response = _patch(api, {"audit_retention_days": days, "feature.x": True})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/validation-error")
    assert [error["pointer"] for error in body["errors"]] == [POINTER]
    detail = body["errors"][0]["detail"]
    assert "audit_retention_days" in detail and str(FLOOR_DAYS) in detail and str(CEILING_DAYS) in detail
    assert api.table_snapshot("tenants") == before  # the harmless setting beside it did not land either


@pytest.mark.parametrize("days", [FLOOR_DAYS, 365, CEILING_DAYS, None])
def test_a_retention_within_the_bounds_or_null_is_stored(api: ApiHarness, days: int | None) -> None:
    response = _patch(api, {"audit_retention_days": days})
    assert response.status_code == 200, response.text
    assert response.json()["settings"]["audit_retention_days"] == days


@pytest.fixture(scope="module")
def audit_container(cosmos_database: DatabaseProxy) -> ContainerProxy:
    return create_audit_container(cosmos_database, f"audit-{uuid.uuid4().hex[:8]}")


def _stored(pg: Any, tenant: uuid.UUID, days: object) -> None:
    """Write the setting as a value stored before the floor existed: straight into the row, past the route."""
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "UPDATE app.tenants SET settings = settings || %s WHERE id = %s",
            (Jsonb({"audit_retention_days": days}), tenant),
        )


def _record(tenant: uuid.UUID) -> AuditRecord:
    return AuditRecord(
        tenant_id=tenant,
        principal_id=f"{tenant}/someone",
        action="Intent.Read",
        resource_type="Intent",
        resource_id="i-1",
        decision="deny",
        reason="no_role",
    )


@pytest.mark.usefixtures("process_pools")  # the lookup reads the tenant row; the records go through the outbox
@pytest.mark.parametrize(("stored", "ttl_days"), [(1, FLOOR_DAYS), (FLOOR_DAYS - 1, FLOOR_DAYS), (400, 400)])
def test_a_retention_stored_below_the_floor_is_raised_to_it_in_each_records_ttl(
    pg: Any,
    audit_container: ContainerProxy,
    new_tenant: Callable[[], uuid.UUID],
    stored: int,
    ttl_days: int,
) -> None:
    tenant = new_tenant()
    _stored(pg, tenant, stored)
    # The lookup the store is built with in Azure (`build_audit_store`): the tenant's own setting, read from its row.
    store = CosmosAuditStore(audit_container, retention_days=_TenantRetention())
    record = _record(tenant)
    store.record(record)
    document = audit_container.read_item(str(record.id), partition_key=str(tenant))
    assert document["ttl"] == ttl_days * 86400


def _stored_below_the_floor(api: ApiHarness, pg: Any, name: str) -> dict[str, str]:
    """A new tenant whose retention of 1 day was stored before the floor existed; its Tenant.Admin's headers."""
    handle = api.provision(name)
    _stored(pg, handle.id, 1)
    return api.headers(name, TENANT_ADMIN)


def test_a_retention_stored_below_the_floor_survives_a_read_edit_write_of_the_whole_settings(
    api: ApiHarness, pg: Any
) -> None:
    headers = _stored_below_the_floor(api, pg, "retention-read-edit-write")
    read = api.client.get("/api/v1/tenant", headers=headers)
    assert read.status_code == 200, read.text
    settings = read.json()["settings"]
    assert settings["audit_retention_days"] == 1
    changed = api.client.patch(
        "/api/v1/tenant",
        json={"settings": {**settings, "feature.x": True}},
        headers={**headers, "If-Match": read.headers["ETag"]},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"] == {**settings, "feature.x": True}  # the retention is still 1
    assert changed.headers["ETag"] != read.headers["ETag"]


def test_the_stored_retention_sent_back_alone_changes_nothing_and_any_other_below_the_floor_is_422(
    api: ApiHarness, pg: Any
) -> None:
    headers = _stored_below_the_floor(api, pg, "retention-sent-back")
    read = api.client.get("/api/v1/tenant", headers=headers)
    same = api.client.patch("/api/v1/tenant", json={"settings": {"audit_retention_days": 1}}, headers=headers)
    assert same.status_code == 200, same.text
    assert same.json()["settings"]["audit_retention_days"] == 1
    assert same.headers["ETag"] == read.headers["ETag"]
    # The same number as another JSON type is no value stored: it is checked, and refused.
    for other in (2, 1.0, True):
        refused = api.client.patch(
            "/api/v1/tenant", json={"settings": {"audit_retention_days": other}}, headers=headers
        )
        assert refused.status_code == 422, refused.text
        assert [error["pointer"] for error in refused.json()["errors"]] == [POINTER]
    after = api.client.get("/api/v1/tenant", headers=headers)
    assert after.json()["settings"]["audit_retention_days"] == 1
    assert after.headers["ETag"] == read.headers["ETag"]
