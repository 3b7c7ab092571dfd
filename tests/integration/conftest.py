# intent_ref: platform.audit
"""Integration fixtures beyond the session's Postgres and Azurite: the app's own pool and the Cosmos DB fake."""

from __future__ import annotations

import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from azure.cosmos import CosmosClient, DatabaseProxy
from psycopg_pool import ConnectionPool
from urllib3.exceptions import InsecureRequestWarning

from devhost.services import free_port
from shared.config import Settings
from shared.db.pool import build_control_pool, build_pool, close_pool
from shared.engine.event_wakeup import forget_event_wakeup
from tests.cosmos_emulator import COSMOS_EMULATOR_KEY, CosmosEmulator, start_cosmos_emulator


@pytest.fixture(scope="session")
def cosmos() -> Iterator[CosmosEmulator]:
    """A cosmosdb-server on a free port, for the whole session."""
    root = Path(tempfile.mkdtemp(prefix="qp-cosmos-"))
    instance = start_cosmos_emulator(free_port(), log_file=root / "cosmosdb-server.log")
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def cosmos_database(cosmos: CosmosEmulator) -> DatabaseProxy:
    """The `quantum` database on the fake; containers are created per test module."""
    # Tests only: the fake serves a self-signed certificate and accepts the emulator's public key.
    # Production uses the account's real certificate and DefaultAzureCredential (no keys).
    client = CosmosClient(cosmos.endpoint, credential=COSMOS_EMULATOR_KEY, connection_verify=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        return client.create_database_if_not_exists("quantum")


def _settings(pg: Any) -> Settings:
    return Settings(
        QP_DATABASE_URL=pg.app_url,
        QP_DATABASE_CONTROL_URL=pg.control_url,
        QP_BLOB_CONNECTION_STRING="UseDevelopmentStorage=true",
        QP_DATABASE_POOL_MAX=16,
    )


@pytest.fixture(scope="module")
def app_pool(pg) -> Iterator[ConnectionPool[Any]]:  # type: ignore[no-untyped-def]
    """A pool of the app's own login (qp_app), as the running app has; big enough for the concurrency tests."""
    pool = build_pool(pg.app_url, _settings(pg), min_size=2)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def control_pool(pg) -> Iterator[ConnectionPool[Any]]:  # type: ignore[no-untyped-def]
    """A pool of the control plane's login (qp_control), as the running app's platform_transaction uses."""
    pool = build_control_pool(pg.control_url, _settings(pg))
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def new_tenant(pg) -> Callable[[], uuid.UUID]:  # type: ignore[no-untyped-def]
    """A factory of bare tenant rows (no settings, no seed), provisioned as the tenants API does: control plane."""

    def make() -> uuid.UUID:
        tenant_id = uuid.uuid4()
        with psycopg.connect(pg.control_url, autocommit=True) as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE qp_platform")
            conn.execute(
                "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
                (tenant_id, f"t-{tenant_id.hex[:12]}", uuid.uuid4()),
            )
        return tenant_id

    return make


@pytest.fixture(scope="module")
def process_pools(pg) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Point the process-wide pools (pool=None) at the session's Postgres: each transaction picks its own login."""
    from shared.config import get_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QP_DATABASE_URL", pg.app_url)
        mp.setenv("QP_DATABASE_CONTROL_URL", pg.control_url)
        mp.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
        get_settings.cache_clear()
        close_pool()
        yield
        forget_event_wakeup()
        close_pool()
        get_settings.cache_clear()
