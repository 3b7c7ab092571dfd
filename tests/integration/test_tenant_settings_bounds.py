# intent_ref: platform.tenants
"""A tenant's settings document stays bounded: merged keys and JSON size, each value and key, checked with the write.

Before, each PATCH could add 100 keys of any size and merged keys piled up (30 PATCHes left 28 MB, returned on every
GET and read on every step dispatch).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from shared.tenants.models import MAX_SETTING_VALUE_BYTES, MAX_SETTINGS_BYTES, MAX_SETTINGS_KEYS
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

TENANT_ADMIN = ["Tenant.Admin"]
ROOMY = {"requests_per_minute": 100_000, "burst": 10_000}


def _patch(api: ApiHarness, tenant: str, settings: dict[str, Any]) -> Any:
    return api.client.patch("/api/v1/tenant", json={"settings": settings}, headers=api.headers(tenant, TENANT_ADMIN))


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def _stored(api: ApiHarness, tenant: str) -> dict[str, Any]:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute("SELECT settings FROM app.tenants WHERE id = %s", (api.tenants[tenant].id,)).fetchone()
    assert row is not None
    settings: dict[str, Any] = row[0]
    return settings


def test_a_merge_past_the_key_bound_is_422_and_changes_nothing(api: ApiHarness) -> None:
    api.provision("keys", quotas=ROOMY)
    for batch in range(MAX_SETTINGS_KEYS // 100):
        response = _patch(api, "keys", {f"k{batch}_{index}": index for index in range(100)})
        assert response.status_code == 200, response.text
    before = api.table_snapshot("tenants")
    body = _problem(_patch(api, "keys", {"one.more": True}), 422)
    assert body["type"].endswith("/validation-error") and body["errors"][0]["pointer"] == "/settings"
    assert f"at most {MAX_SETTINGS_KEYS} keys" in body["errors"][0]["detail"]
    assert f"would hold {MAX_SETTINGS_KEYS + 1} keys" in body["errors"][0]["detail"]
    assert api.table_snapshot("tenants") == before
    # A key it holds already may still change: the document does not grow.
    changed = _patch(api, "keys", {"k0_0": "changed"})
    assert changed.status_code == 200, changed.text
    assert len(changed.json()["settings"]) == MAX_SETTINGS_KEYS


def test_a_merge_past_the_size_bound_is_422_and_changes_nothing(api: ApiHarness) -> None:
    api.provision("bytes", quotas=ROOMY)
    half = "x" * (MAX_SETTINGS_BYTES // 2 - 100)
    assert _patch(api, "bytes", {"first": half}).status_code == 200
    assert _patch(api, "bytes", {"second": half}).status_code == 200
    before = api.table_snapshot("tenants")
    body = _problem(_patch(api, "bytes", {"third": "x" * 500}), 422)
    assert f"and {MAX_SETTINGS_BYTES} bytes" in body["errors"][0]["detail"]
    assert api.table_snapshot("tenants") == before
    assert set(_stored(api, "bytes")) == {"first", "second"}


def test_a_value_or_key_past_its_bound_is_422_with_its_pointer(api: ApiHarness) -> None:
    api.provision("values", quotas=ROOMY)
    before = api.table_snapshot("tenants")
    body = _problem(_patch(api, "values", {"fine": 1, "a/big": ["x" * MAX_SETTING_VALUE_BYTES]}), 422)
    assert [error["pointer"] for error in body["errors"]] == ["/settings/a~1big"]
    _problem(_patch(api, "values", {"k" * 129: 1}), 422)
    _problem(_patch(api, "values", {"": 1}), 422)
    assert api.table_snapshot("tenants") == before
    # The longest allow-list the settings checks accept still fits in one value.
    hosts = [f"h{index:03d}{'a' * 59}.{'b' * 63}.{'c' * 63}.{'d' * 57}.com" for index in range(100)]
    assert {len(host) for host in hosts} == {253}
    assert _patch(api, "values", {"allowed_hosts": hosts}).status_code == 200


def test_concurrent_merges_cannot_overshoot_the_bound(api: ApiHarness) -> None:
    """Eight admins add 40 keys each at once: the check and the write are one statement, so exactly the merges that
    fit land (five), whatever their order."""
    api.provision("racing", quotas=ROOMY)
    answers: list[int] = []
    start = threading.Barrier(8)

    def add(batch: int) -> None:
        start.wait()
        answers.append(_patch(api, "racing", {f"r{batch}_{index}": index for index in range(40)}).status_code)

    threads = [threading.Thread(target=add, args=(batch,)) for batch in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200] * 5 + [422] * 3
    assert len(_stored(api, "racing")) == MAX_SETTINGS_KEYS


def test_a_document_over_the_bound_from_before_may_shrink_but_not_grow(api: ApiHarness) -> None:
    handle = api.provision("legacy", quotas=ROOMY)
    legacy = {f"old{index}": "v" * 400 for index in range(MAX_SETTINGS_KEYS + 50)}
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("UPDATE app.tenants SET settings = %s WHERE id = %s", (Jsonb(legacy), handle.id))
    assert _patch(api, "legacy", {"old0": "short"}).status_code == 200
    before = api.table_snapshot("tenants")
    _problem(_patch(api, "legacy", {"new": 1}), 422)
    _problem(_patch(api, "legacy", {"old1": "v" * 500}), 422)
    assert api.table_snapshot("tenants") == before
    assert api.client.get("/api/v1/tenant", headers=api.headers("legacy", TENANT_ADMIN)).status_code == 200
