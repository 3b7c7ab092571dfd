# intent_ref: platform.identity
"""The app without I/O for refusals made at its edge: a real validator reads the issuer's documents from memory,
tenants come from a stand-in directory cache, the rate token is always granted, and the database is one that does
not exist (so a request that reached a transaction would fail)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

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
from shared.auth.tokens import TokenValidator
from shared.config import get_settings
from shared.db.pool import close_pool
from shared.ratelimit import RateDecision
from shared.tenants.models import Tenant, TenantQuotas
from shared.tenants.repository import tenant_directory

BASE_URL = "http://127.0.0.1:7071"
CONTOSO = dev_tenant_id("contoso")
METADATA_URL = openid_metadata_url(BASE_URL)


def a_tenant(entra: uuid.UUID, name: str, display_name: str) -> Tenant:
    """An active tenant of the Entra tenant `entra`, as the directory would hold it."""
    return Tenant(
        id=uuid.uuid4(),
        name=name,
        display_name=display_name,
        entra_tenant_id=entra,
        status="active",
        quotas=TenantQuotas(),
        allowed_modules=[],
        allowed_targets=[],
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


CONTOSO_TENANT = a_tenant(CONTOSO, "contoso", "Contoso")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(Path(tmp_path_factory.mktemp("issuer")))


@pytest.fixture()
def validator(key: SigningKey) -> TokenValidator:
    def fetch(url: str) -> dict[str, Any]:
        return openid_configuration(BASE_URL, "organizations") if url == METADATA_URL else key.jwks(BASE_URL)

    return TokenValidator(METADATA_URL, DEFAULT_AUDIENCE, fetch=fetch)


def edge_client(
    monkeypatch: pytest.MonkeyPatch, validator: TokenValidator, tenants: Mapping[uuid.UUID, Tenant]
) -> Iterator[TestClient]:
    """The app, its tokens checked by `validator` and its directory knowing `tenants` (by Entra tenant id) only."""
    monkeypatch.setenv("QP_DATABASE_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    get_settings.cache_clear()
    monkeypatch.setattr(tenant_directory, "cached", lambda entra: (True, tenants.get(entra)))
    monkeypatch.setattr(api_security, "take_tenant_token", lambda tenant_id, limit: RateDecision(True, 0.0))
    app = create_app()
    app.dependency_overrides[api_security.token_validator] = lambda: validator
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    close_pool()
    readiness._probe_client.cache_clear()
    get_settings.cache_clear()


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch, validator: TokenValidator) -> Iterator[TestClient]:
    """The app, its directory knowing contoso only."""
    yield from edge_client(monkeypatch, validator, {CONTOSO: CONTOSO_TENANT})


def bearer(key: SigningKey, *roles: str) -> dict[str, str]:
    """The Authorization header of a contoso caller holding `roles`."""
    token = sign_access_token(key, tenant=str(CONTOSO), base_url=BASE_URL, roles=roles)
    return {"Authorization": f"Bearer {token}"}


def validation_problem(answer: Any) -> dict[str, Any]:
    """The body of a 422 validation problem."""
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = answer.json()
    assert problem["type"].endswith("/validation-error"), problem
    return problem
