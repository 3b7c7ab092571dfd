# intent_ref: platform.devhost
"""`QP_DATABASE_URL` points the devhost at an external Postgres: it migrates there and the app runs on it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devhost.child import PROJECT_ROOT
from devhost.identity import mint_token_cli
from devhost.services import start_postgres, stop_postgres
from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e


def test_devhost_runs_on_an_external_postgres(devhost_factory: DevhostFactory, pg: Any) -> None:
    root = Path(tempfile.mkdtemp(prefix="qp-external-"))
    external_url = start_postgres(root / "server")
    try:
        host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_DATABASE_URL": external_url}, extra_args=("--seed-demo",))
        ready = httpx.get(f"{host.base_url}/api/ready")
        assert ready.status_code == 200, ready.text
        token = mint_token_cli(pg.root, host.base_url, "contoso", ["Intent.Reader"], [], None, 600, False)
        me = httpx.get(f"{host.base_url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["tenant_name"] == "contoso"
        # The platform's tables live on the external server, not on the session's embedded one.
        with psycopg.connect(external_url) as conn:
            names = {row[0] for row in conn.execute("SELECT name FROM app.tenants").fetchall()}  # as superuser
            assert names == {"contoso", "fabrikam", "tenant-123"}
            assert conn.execute("SELECT max(version) FROM app.schema_migrations").fetchone()[0] >= 11
    finally:
        stop_postgres(root / "server")
        shutil.rmtree(root, ignore_errors=True)
