# intent_ref: platform.identity
"""The nil UUID names no Entra directory and no object: a token whose `tid` (or `oid`) is the nil UUID is refused as
any malformed claim is (401 `invalid-token`), and the control plane provisions no tenant for it (422). Before, such a
token was accepted, and answered as the caller of whatever tenant had been provisioned for the nil UUID.

Through the app without I/O, as tests/unit/edge_harness.py has it: a real validator reads the issuer's documents from
memory, tenants come from a stand-in directory cache (which holds a tenant provisioned for the nil UUID before the
control plane refused it), and the rate token is always granted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from devhost.identity import SigningKey, sign_access_token
from shared.auth.principal import INTENT_READER, PLATFORM_ADMIN
from shared.auth.tokens import InvalidTokenError, TokenValidator
from shared.tenants.models import TenantCreate
from tests.unit.edge_harness import (  # noqa: F401  # the fixtures key, validator
    BASE_URL,
    CONTOSO,
    a_tenant,
    edge_client,
    key,
    validator,
)

NIL = "00000000-0000-0000-0000-000000000000"

TENANTS = {entra: a_tenant(entra, f"t-{entra.hex[:8]}", "") for entra in (uuid.UUID(NIL), CONTOSO)}
"""What the directory knows: contoso, and a tenant provisioned for the nil UUID while the control plane allowed it."""


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch, validator: TokenValidator) -> Iterator[TestClient]:
    yield from edge_client(monkeypatch, validator, TENANTS)


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
