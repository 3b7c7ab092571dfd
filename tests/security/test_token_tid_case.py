# intent_ref: platform.hardening
"""A token's `tid` is accepted only in the lower-case form tenants are stored in, so one tenant has one spelling."""

from __future__ import annotations

from typing import Any

import pytest

from devhost.identity import issuer_for
from shared.auth.tokens import InvalidTokenError
from tests.integration.api_harness import ISSUER_BASE, ApiHarness

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]
ME = "/api/v1/me"


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> str:
    api.provision("tid-case")
    return "tid-case"


def _token_with_tid(api: ApiHarness, tenant: str, tid: str) -> str:
    # iss follows tid, as an issuer that spells its tenant that way would sign it: only the tid's case differs.
    return api.token(tenant, READER, claims={"tid": tid, "iss": issuer_for(ISSUER_BASE, tid)})


def test_lower_case_tid_is_accepted(api: ApiHarness, tenant: str) -> None:
    tid = str(api.tenants[tenant].entra_id)
    response = api.client.get(ME, headers={"Authorization": f"Bearer {_token_with_tid(api, tenant, tid)}"})
    assert response.status_code == 200, response.text
    assert response.json()["entra_tenant_id"] == tid


@pytest.mark.parametrize("spelling", ["upper", "mixed"])
def test_tid_not_in_lower_case_is_refused_with_401_problem(api: ApiHarness, tenant: str, spelling: str) -> None:
    tid = str(api.tenants[tenant].entra_id)
    other = tid.upper() if spelling == "upper" else tid[:9] + tid[9:].upper()
    assert other != tid
    response = api.client.get(ME, headers={"Authorization": f"Bearer {_token_with_tid(api, tenant, other)}"})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    body: dict[str, Any] = response.json()
    assert body["status"] == 401
    assert "lower-case" in body["detail"]


def test_validator_names_the_refusal(api: ApiHarness, tenant: str) -> None:
    tid = str(api.tenants[tenant].entra_id).upper()
    with pytest.raises(InvalidTokenError) as refused:
        api.validator().validate(_token_with_tid(api, tenant, tid))
    assert refused.value.reason == "tid is not a lower-case GUID"
