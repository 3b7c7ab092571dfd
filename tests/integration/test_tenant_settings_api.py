# intent_ref: platform.tenants
"""A Tenant.Admin's settings through the real app: an allow-list that would open a private network is refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.config import get_settings
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

TENANT_ADMIN = ["Tenant.Admin"]


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("gamma")


@pytest.fixture()
def private_networks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set QP_ALLOW_PRIVATE_NETWORK_HOSTS for the running app; off (the Azure value) unless a test turns it on."""

    def set_to(value: bool) -> None:
        monkeypatch.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "true" if value else "false")
        get_settings.cache_clear()

    set_to(False)
    yield set_to
    get_settings.cache_clear()


def _patch(api: ApiHarness, settings: dict[str, Any]) -> Any:
    return api.client.patch("/api/v1/tenant", json={"settings": settings}, headers=api.headers("gamma", TENANT_ADMIN))


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def test_loopback_in_allowed_hosts_is_422_and_changes_nothing(api: ApiHarness, private_networks: Any) -> None:
    before = api.table_snapshot("tenants")
    body = _problem(_patch(api, {"allowed_hosts": ["api.example.com", "127.0.0.1"], "feature.x": True}), 422)
    assert body["status"] == 422 and body["type"].endswith("/validation-error")
    assert [error["pointer"] for error in body["errors"]] == ["/settings/allowed_hosts/1"]
    assert "'127.0.0.1'" in body["errors"][0]["detail"] and "loopback" in body["errors"][0]["detail"]
    assert api.table_snapshot("tenants") == before  # the other, harmless setting did not land either


@pytest.mark.parametrize("entry", ["localhost", "db.internal", "10.0.0.8", "[::1]", "169.254.169.254"])
def test_other_private_entries_are_refused(api: ApiHarness, private_networks: Any, entry: str) -> None:
    before = api.table_snapshot("tenants")
    body = _problem(_patch(api, {"allowed_hosts": [entry]}), 422)
    assert body["errors"][0]["pointer"] == "/settings/allowed_hosts/0" and repr(entry) in body["errors"][0]["detail"]
    assert api.table_snapshot("tenants") == before


def test_public_hosts_are_accepted_with_private_networks_closed(
    api: ApiHarness,
    private_networks: Any,
) -> None:
    response = _patch(api, {"allowed_hosts": ["api.example.com"]})
    assert response.status_code == 200, response.text
    assert response.json()["settings"]["allowed_hosts"] == ["api.example.com"]


def test_local_development_may_allow_loopback_but_never_metadata(
    api: ApiHarness,
    private_networks: Any,
) -> None:
    private_networks(True)
    response = _patch(api, {"allowed_hosts": ["127.0.0.1", "localhost"]})
    assert response.status_code == 200, response.text
    assert response.json()["settings"]["allowed_hosts"] == ["127.0.0.1", "localhost"]
    before = api.table_snapshot("tenants")
    body = _problem(_patch(api, {"allowed_hosts": ["169.254.169.254"]}), 422)
    assert "cloud metadata" in body["errors"][0]["detail"]
    assert api.table_snapshot("tenants") == before
