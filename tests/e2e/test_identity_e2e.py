# intent_ref: platform.identity
"""Dev tokens through the devhost: the app validates them against the devhost's own issuer, as it would Entra's."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from devhost.child import PROJECT_ROOT
from devhost.identity import mint_token_cli
from devhost.provision import demo_tenant_id
from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e


def test_dev_tokens_work_end_to_end(devhost_factory: DevhostFactory, pg: Any) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT, extra_args=("--seed-demo",))

    def token(tenant: str, roles: list[str], expires_in: int = 600) -> dict[str, str]:
        minted = mint_token_cli(pg.root, host.base_url, tenant, roles, [], None, expires_in, False)
        return {"Authorization": f"Bearer {minted}"}

    me = httpx.get(f"{host.base_url}/api/v1/me", headers=token("contoso", ["Intent.Reader"]))
    assert me.status_code == 200, me.text
    assert me.json()["tenant_id"] == str(demo_tenant_id("contoso"))
    assert me.json()["tenant_name"] == "contoso"

    # fabrikam's admin reads fabrikam, never contoso's settings.
    settings = httpx.get(f"{host.base_url}/api/v1/tenant", headers=token("fabrikam", ["Tenant.Admin"]))
    assert settings.status_code == 200 and settings.json()["name"] == "fabrikam"

    expired = httpx.get(f"{host.base_url}/api/v1/me", headers=token("contoso", ["Intent.Reader"], expires_in=-600))
    assert expired.status_code == 401
    assert expired.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    denied = httpx.get(f"{host.base_url}/api/v1/tenants", headers=token("contoso", ["Tenant.Admin"]))
    assert denied.status_code == 403 and denied.json()["reason"] == "role_required"
