# intent_ref: platform.tenant-isolation
"""For the tests that a check runs with no pooled connection held: the tenant transactions' pool made a pool of one,
a gate that holds a wrapped check while another tenant's transaction tries that pool, and the tenant records they
start with."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import shared.db.session as session
from shared.config import Settings
from shared.db.pool import build_pool
from shared.db.session import tenant_transaction
from shared.tenants.models import Tenant
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness

GATE_WAIT_S = 60.0
"""How long a held check waits to be released at most: only a broken test waits that long."""
INPUT_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "array", "contains": {"type": "string", "pattern": "^q$"}, "minContains": 2}},
}
"""An intent's input schema whose check costs in proportion to the input (every item is matched): a large input makes
a costly check, cheap enough for a test."""


class Gate:
    """Holds every call of a wrapped function until released, and says when the first one is being held."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.calls = 0

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.entered.set()
            self.released.wait(GATE_WAIT_S)
            return real(*args, **kwargs)

        return held


@pytest.fixture
def one_connection(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectionPool[Any]]:
    """The tenant transactions' pool made a pool of one connection, so that one borrower held keeps every other out
    (which then gives up within a second, with PoolTimeout)."""
    settings = Settings(
        QP_DATABASE_URL=api.app_url,
        QP_DATABASE_CONTROL_URL=api.control_url,
        QP_BLOB_CONNECTION_STRING="UseDevelopmentStorage=true",
        QP_DATABASE_POOL_MAX=1,
        QP_DATABASE_POOL_TIMEOUT_S=1.0,
    )
    pool = build_pool(api.app_url, settings, name="one-connection")
    monkeypatch.setattr(session, "get_pool", lambda: pool)
    yield pool
    pool.close()


def tenant_record(tenant_id: uuid.UUID) -> Tenant:
    """The tenant as the platform reads it, read in its own transaction."""
    with tenant_transaction(tenant_id) as conn:
        tenant = get_tenant(conn, tenant_id)
    assert tenant is not None
    return tenant


def other_tenants_transaction_completes(tenant_id: uuid.UUID) -> bool:
    """Whether another tenant's transaction got a connection and ran (False: the pool had none to give)."""
    try:
        with tenant_transaction(tenant_id) as conn:
            row = conn.execute("SELECT app.current_tenant_id() AS tenant").fetchone()
    except psycopg.OperationalError:  # PoolTimeout: every connection of the pool is held
        return False
    return row == {"tenant": tenant_id}
