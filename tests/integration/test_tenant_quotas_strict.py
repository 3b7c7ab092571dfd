# intent_ref: platform.tenants
"""A tenant's quotas are whole numbers as sent: `true`, "60" and 7.0 are refused with 422 and nothing is stored.

Before, the quota model coerced them: a Platform.Admin's `{"quotas": {"burst": true}}` answered 200 and stored 1,
"60" stored 60 and 7.0 stored 7, though shared/ratelimit.py treats `true` in a quota as a mistake."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from shared.tenants.repository import tenant_directory
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

PLATFORM_ADMIN = ["Platform.Admin"]
COERCED = [
    ("burst", True),
    ("burst", "60"),
    ("requests_per_minute", 7.0),
    ("max_concurrent_executions", False),
    ("max_webhook_subscriptions", "2"),
]


def _change(api: ApiHarness, admin: dict[str, str], tenant_id: Any, change: dict[str, Any]) -> Any:
    etag = api.client.get(f"/api/v1/tenants/{tenant_id}", headers=admin).headers["etag"]
    return api.client.patch(f"/api/v1/tenants/{tenant_id}", json=change, headers={**admin, "If-Match": etag})


def _refused_at(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    pointers = [error.get("pointer", "") for error in response.json().get("errors", [])]
    assert any(pointer.endswith(f"/quotas/{field}") for pointer in pointers), response.text


def test_a_quota_that_is_not_a_whole_number_is_refused_on_update(api: ApiHarness) -> None:
    api.provision("quota-operators")
    admin = api.headers("quota-operators", PLATFORM_ADMIN)
    customer = api.provision("quota-customer", quotas={"burst": 5})
    before = api.table_snapshot("tenants")
    for field, value in COERCED:
        _refused_at(_change(api, admin, customer.id, {"quotas": {field: value}}), field)
    assert api.table_snapshot("tenants") == before
    # A whole number is taken as it is.
    changed = _change(api, admin, customer.id, {"quotas": {"burst": 60}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["quotas"]["burst"] == 60


def test_a_quota_that_is_not_a_whole_number_is_refused_on_create(api: ApiHarness) -> None:
    api.provision("quota-creators")
    admin = api.headers("quota-creators", PLATFORM_ADMIN)
    before = api.table_snapshot("tenants")
    for field, value in COERCED:
        body = {"name": "coerced-quota", "entra_tenant_id": "5e3c1a7b-2d4f-4a6e-8b9c-0d1e2f3a4b5c"}
        _refused_at(api.client.post("/api/v1/tenants", json={**body, "quotas": {field: value}}, headers=admin), field)
    assert api.table_snapshot("tenants") == before


@pytest.mark.parametrize(
    "stored",
    [{"burst": 60.0}, {"requests_per_minute": True}, {"burst": "60"}, {"burst": 0, "max_concurrent_executions": -1}],
)
def test_a_stored_quota_that_is_not_valid_leaves_its_tenant_online(api: ApiHarness, stored: dict[str, Any]) -> None:
    # Strict on input only: a stored value the API never writes (a hand edit, another writer) made every request of
    # its tenant, and the operators' listing of tenants, answer 500 once the quota model was strict on read too.
    api.provision("quota-readers")
    admin = api.headers("quota-readers", PLATFORM_ADMIN)
    customer = api.provision("quota-stored", quotas={"burst": 5, "requests_per_minute": 600})
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("UPDATE app.tenants SET quotas = %s WHERE id = %s", (Jsonb(stored), customer.id))
    tenant_directory.forget()
    own = api.client.get("/api/v1/intents", headers=api.headers("quota-stored", ["Intent.Reader"]))
    assert own.status_code == 200, own.text
    listing = api.client.get("/api/v1/tenants", params={"limit": 100}, headers=admin)
    assert listing.status_code == 200, listing.text
    read = api.client.get(f"/api/v1/tenants/{customer.id}", headers=admin)
    assert read.status_code == 200, read.text
    # What is not valid is left out: the platform's default applies.
    assert all(read.json()["quotas"][name] is None for name in stored), read.json()["quotas"]
    repaired = _change(api, admin, customer.id, {"quotas": {"burst": 7}})
    assert repaired.status_code == 200, repaired.text
    assert repaired.json()["quotas"]["burst"] == 7
