# intent_ref: platform.tenants
"""The control plane refuses to suspend the operators' own tenant: afterwards no operator could call it again.

Before, a Platform.Admin could suspend the tenant its own token belongs to (the operators' tenant, ADR 0042); every
control-plane call then answered 403 tenant_suspended, the un-suspend included.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.api.security import token_validator
from shared.tenants.repository import tenant_directory
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

PLATFORM_ADMIN = ["Platform.Admin"]


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def _change(api: ApiHarness, admin: dict[str, str], tenant_id: Any, change: dict[str, Any]) -> Any:
    etag = api.client.get(f"/api/v1/tenants/{tenant_id}", headers=admin).headers["etag"]
    return api.client.patch(f"/api/v1/tenants/{tenant_id}", json=change, headers={**admin, "If-Match": etag})


def test_suspending_the_callers_own_tenant_is_409_and_changes_nothing(api: ApiHarness) -> None:
    operators = api.provision("operators")
    admin = api.headers("operators", PLATFORM_ADMIN)
    before = api.table_snapshot("tenants")
    body = _problem(_change(api, admin, operators.id, {"status": "suspended", "display_name": "Gone"}), 409)
    assert body["type"].endswith("/self-suspension") and "own tenant" in body["detail"]
    assert api.table_snapshot("tenants") == before
    tenant_directory.forget()
    assert api.client.get("/api/v1/tenants", headers=admin).status_code == 200
    # Any other change of its own tenant stands, and so does suspending another tenant.
    renamed = _change(api, admin, operators.id, {"display_name": "Operators", "status": "active"})
    assert renamed.status_code == 200 and renamed.json()["status"] == "active", renamed.text
    customer = api.provision("customer")
    suspended = _change(api, admin, customer.id, {"status": "suspended"})
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended", suspended.text


def test_the_operators_tenant_named_by_the_setting_cannot_suspend_itself(api: ApiHarness) -> None:
    """With QP_OPERATOR_ENTRA_TENANT_ID set (ADR 0042) the caller's tenant is the operators' tenant."""
    operators = api.provision("named-operators")
    app = api.client.app
    app.dependency_overrides[token_validator] = lambda: api.validator(operator_tenant=operators.entra_id)  # type: ignore[attr-defined]
    try:
        admin = api.headers("named-operators", PLATFORM_ADMIN)
        _problem(_change(api, admin, operators.id, {"status": "suspended"}), 409)
        tenant_directory.forget()
        assert api.client.get(f"/api/v1/tenants/{operators.id}", headers=admin).json()["status"] == "active"
    finally:
        app.dependency_overrides[token_validator] = lambda: api.validator()  # type: ignore[attr-defined]
