# intent_ref: platform.identity
"""The gateway in-process against the real Postgres and Azurite, with dev-issuer tokens."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from devhost.identity import SigningKey, openid_configuration, openid_metadata_url, sign_access_token
from shared.auth.tokens import TokenValidator

ISSUER_BASE = "http://127.0.0.1:7071"
AUDIENCE = "api://quantum-platform"
ALL_MODULES = ["http.request", "artifact.write", "build-container", "deploy-to-kubernetes", "verify-deployment"]


@dataclass
class TenantHandle:
    """A provisioned tenant and how to mint tokens for it."""

    id: uuid.UUID
    name: str
    entra_id: uuid.UUID


@dataclass
class ApiHarness:
    """A TestClient on the real app, tokens from a local key, and direct SQL for assertions."""

    client: TestClient
    key: SigningKey
    admin_url: str
    app_url: str
    control_url: str
    tenants: dict[str, TenantHandle] = field(default_factory=dict)
    fetches: list[str] = field(default_factory=list)
    fetch: Callable[[str], dict[str, Any]] | None = None
    """How the harness's validator reads the issuer's documents (for a test that builds a validator of its own)."""

    def validator(self, **kwargs: Any) -> TokenValidator:
        """A validator of this harness's tokens, with `kwargs` (e.g. `operator_tenant`)."""
        assert self.fetch is not None
        return TokenValidator(openid_metadata_url(ISSUER_BASE), [AUDIENCE], fetch=self.fetch, **kwargs)

    def token(
        self, tenant: str, roles: Sequence[str] = (), *, oid: str | None = None, claims: dict[str, Any] | None = None
    ) -> str:
        """A token of `tenant` (handle name or Entra tenant GUID) with `roles`; `claims` override (None drops)."""
        handle = self.tenants.get(tenant)
        tid = str(handle.entra_id) if handle else tenant
        return sign_access_token(self.key, tenant=tid, base_url=ISSUER_BASE, roles=roles, oid=oid, extra_claims=claims)

    def headers(self, tenant: str, roles: Sequence[str] = (), **kwargs: Any) -> dict[str, str]:
        """Authorization header for a token of `tenant`."""
        return {"Authorization": f"Bearer {self.token(tenant, roles, **kwargs)}"}

    def provision(
        self,
        name: str,
        *,
        status: str = "active",
        quotas: dict[str, Any] | None = None,
        allowed_modules: Sequence[str] = ALL_MODULES,
        allowed_targets: Sequence[str] = ("staging", "production"),
    ) -> TenantHandle:
        """Insert a tenant through the control-plane role (as the tenants API does)."""
        handle = TenantHandle(uuid.uuid4(), f"{name}-{uuid.uuid4().hex[:6]}", uuid.uuid4())
        with psycopg.connect(self.control_url, autocommit=True) as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE qp_platform")
            conn.execute(
                "INSERT INTO app.tenants (id, name, entra_tenant_id, status, quotas, allowed_modules, allowed_targets)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    handle.id,
                    handle.name,
                    handle.entra_id,
                    status,
                    psycopg.types.json.Jsonb(quotas or {}),
                    list(allowed_modules),
                    list(allowed_targets),
                ),
            )
        self.tenants[name] = handle
        return handle

    def audit_rows(self, tenant: str) -> list[dict[str, Any]]:
        """Every audit record of a tenant, oldest first (read as the admin, bypassing RLS)."""
        with psycopg.connect(self.admin_url, dbname="quantum", row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute(
                "SELECT * FROM app.audit_events WHERE tenant_id = %s ORDER BY occurred_at, id",
                (self.tenants[tenant].id,),
            ).fetchall()

    def table_snapshot(self, table: str) -> list[tuple[Any, ...]]:
        """All rows of an app table (as the admin), to prove a refused request changed nothing."""
        with psycopg.connect(self.admin_url, dbname="quantum") as conn:
            return conn.execute(f"SELECT * FROM app.{table} ORDER BY 1, 2").fetchall()


@pytest.fixture(scope="module")
def api(pg, azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHarness]:  # type: ignore[no-untyped-def]
    """The app with settings pointing at the session's Postgres and Azurite."""
    from shared.api.app import create_app
    from shared.api.readiness import _probe_client
    from shared.api.security import token_validator
    from shared.config import get_settings
    from shared.db.pool import close_pool
    from shared.engine.event_wakeup import forget_event_wakeup
    from shared.tenants.repository import tenant_directory

    key = SigningKey.load_or_create(Path(tmp_path_factory.mktemp("issuer")))
    metadata_url = openid_metadata_url(ISSUER_BASE)
    fetches: list[str] = []

    def fetch(url: str) -> dict[str, Any]:
        fetches.append(url)
        if url == metadata_url:
            return openid_configuration(ISSUER_BASE, "organizations")
        return key.jwks(ISSUER_BASE)

    validator = TokenValidator(metadata_url, [AUDIENCE], fetch=fetch)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QP_DATABASE_URL", pg.app_url)
        mp.setenv("QP_DATABASE_CONTROL_URL", pg.control_url)
        mp.setenv("QP_BLOB_CONNECTION_STRING", azurite.connection_string)
        mp.setenv("QP_AUTH_METADATA_URL", metadata_url)
        mp.setenv("QP_AUTH_AUDIENCE", AUDIENCE)
        get_settings.cache_clear()
        close_pool()
        tenant_directory.forget()
        app = create_app()
        app.dependency_overrides[token_validator] = lambda: validator
        with TestClient(app, raise_server_exceptions=False) as client:
            yield ApiHarness(client, key, pg.admin_url, pg.app_url, pg.control_url, fetches=fetches, fetch=fetch)
        forget_event_wakeup()
        close_pool()
        _probe_client.cache_clear()
        get_settings.cache_clear()
