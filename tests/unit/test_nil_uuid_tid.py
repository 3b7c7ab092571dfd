# intent_ref: platform.identity
"""The nil UUID names no Entra directory and no object: a token whose `tid` (or `oid`) is the nil UUID is refused as
any malformed claim is (401 `invalid-token`), and the control plane provisions no tenant for it (422). Before, such a
token was accepted, and answered as the caller of whatever tenant had been provisioned for the nil UUID.

Through the app without I/O: a real validator reads the issuer's documents from memory, tenants come from a
stand-in directory cache (which holds a tenant provisioned for the nil UUID before the control plane refused it),
and the rate token is always granted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from devhost.identity import (
    DEFAULT_AUDIENCE,
    SigningKey,
    dev_tenant_id,
    openid_configuration,
    openid_metadata_url,
    sign_access_token,
)
from shared.api import readiness
from shared.api import security as api_security
from shared.api.app import create_app
from shared.auth.principal import INTENT_READER, PLATFORM_ADMIN
from shared.auth.tokens import InvalidTokenError, TokenValidator
from shared.config import get_settings
from shared.db.pool import close_pool
from shared.ratelimit import RateDecision
from shared.tenants.models import Tenant, TenantCreate, TenantQuotas
from shared.tenants.repository import tenant_directory

BASE_URL = "http://127.0.0.1:7071"
NIL = "00000000-0000-0000-0000-000000000000"
CONTOSO = dev_tenant_id("contoso")
METADATA_URL = openid_metadata_url(BASE_URL)


def _tenant(entra: uuid.UUID) -> Tenant:
    return Tenant(
        id=uuid.uuid4(),
        name=f"t-{entra.hex[:8]}",
        display_name="",
        entra_tenant_id=entra,
        status="active",
        quotas=TenantQuotas(),
        allowed_modules=[],
        allowed_targets=[],
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


TENANTS = {entra: _tenant(entra) for entra in (uuid.UUID(NIL), CONTOSO)}
"""What the directory knows: contoso, and a tenant provisioned for the nil UUID while the control plane allowed it."""


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(Path(tmp_path_factory.mktemp("issuer")))


@pytest.fixture()
def validator(key: SigningKey) -> TokenValidator:
    def fetch(url: str) -> dict[str, Any]:
        return openid_configuration(BASE_URL, "organizations") if url == METADATA_URL else key.jwks(BASE_URL)

    return TokenValidator(METADATA_URL, DEFAULT_AUDIENCE, fetch=fetch)


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch, validator: TokenValidator) -> Iterator[TestClient]:
    monkeypatch.setenv("QP_DATABASE_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    get_settings.cache_clear()
    monkeypatch.setattr(tenant_directory, "cached", lambda entra: (True, TENANTS.get(entra)))
    monkeypatch.setattr(api_security, "take_tenant_token", lambda tenant_id, limit: RateDecision(True, 0.0))
    app = create_app()
    app.dependency_overrides[api_security.token_validator] = lambda: validator
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    close_pool()
    readiness._probe_client.cache_clear()
    get_settings.cache_clear()


def _token(key: SigningKey, tid: str, *, oid: str | None = None, roles: tuple[str, ...] = (INTENT_READER,)) -> str:
    """A token of the Entra tenant `tid`, its issuer that tenant's (so only the tid's own check can refuse it)."""
    issuer = f"{BASE_URL}/devhost/identity/{tid}/v2.0"
    return sign_access_token(
        key, tenant=str(CONTOSO), base_url=BASE_URL, roles=roles, oid=oid, extra_claims={"tid": tid, "iss": issuer}
    )


def _reason(validator: TokenValidator, token: str) -> str:
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(token)
    return caught.value.reason


def test_a_nil_tid_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    assert validator.validate(_token(key, str(CONTOSO))).entra_tenant_id == CONTOSO  # the same token, another tid
    assert _reason(validator, _token(key, NIL)) == "tid is the nil GUID"


def test_a_nil_oid_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    assert _reason(validator, _token(key, str(CONTOSO), oid=NIL)) == "oid is the nil GUID"


def test_a_nil_tid_gets_the_401_of_a_tid_that_is_not_a_guid(client: TestClient, key: SigningKey) -> None:
    # The contoso caller's token is taken as before: only the nil UUID changed.
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {_token(key, str(CONTOSO))}"}).status_code == 200
    nil = client.get("/api/v1/me", headers={"Authorization": f"Bearer {_token(key, NIL)}"})
    not_a_guid = client.get("/api/v1/me", headers={"Authorization": f"Bearer {_token(key, 'contoso')}"})

    assert (nil.status_code, not_a_guid.status_code) == (401, 401), nil.text
    for answer in (nil, not_a_guid):
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    problem, other = nil.json(), not_a_guid.json()
    assert (problem["type"], problem["title"]) == (other["type"], other["title"]), problem
    assert problem["type"].endswith("/invalid-token") and problem["detail"] == "tid is the nil GUID", problem
    assert set(problem) == set(other), problem


def test_the_control_plane_provisions_no_tenant_for_the_nil_uuid(client: TestClient, key: SigningKey) -> None:
    admin = {"Authorization": f"Bearer {_token(key, str(CONTOSO), roles=(PLATFORM_ADMIN,))}"}
    body = {"name": "nil-tenant", "entra_tenant_id": NIL}
    answer = client.post("/api/v1/tenants", json=body, headers=admin)

    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"].endswith("/validation-error"), problem
    assert [error["pointer"] for error in problem["errors"]] == ["/entra_tenant_id"], problem
    assert "nil UUID" in problem["errors"][0]["detail"], problem


@pytest.mark.parametrize("spelling", [NIL, uuid.UUID(NIL).hex, f"{{{NIL}}}", uuid.UUID(NIL)])
def test_no_spelling_of_the_nil_uuid_provisions_a_tenant(spelling: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        TenantCreate.model_validate({"name": "nil-tenant", "entra_tenant_id": spelling})
    assert [error["loc"] for error in caught.value.errors()] == [("entra_tenant_id",)]
    # Any other Entra tenant id is taken as before.
    assert TenantCreate.model_validate({"name": "contoso", "entra_tenant_id": str(CONTOSO)}).entra_tenant_id == CONTOSO
