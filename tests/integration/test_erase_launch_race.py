# intent_ref: platform.tenants
"""A tenant erased between a start's commit and its launch, or under a request waiting on its row: no orchestration
outlives it, and the request is answered as one of a tenant that does not exist."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.api.problems import TENANT_REFERENCE
from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine.start import StartRequest, start_execution
from shared.engine.start_service import launch
from shared.tenants.offboarding import TENANT_TABLES
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.test_erase_races import _Durable, _erase
from tests.integration.test_offboarding import _tenant_row_counts

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Executor", "Intent.Reader"]
PLATFORM_ADMIN = ["Platform.Admin"]


class _StartingDurable(_Durable):
    """The erasure's orchestration side, which a launch also starts instances on."""

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        assert instance_id is not None
        self.start(instance_id)
        return instance_id


@pytest.fixture()
def durable(api: ApiHarness) -> Iterator[_StartingDurable]:
    client = _StartingDurable()
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    yield client
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


def _tenant_with_intent(api: ApiHarness, name: str) -> tuple[TenantHandle, uuid.UUID]:
    tenant = api.provision(name, allowed_modules=["wait"])
    body = {
        "name": f"late-{uuid.uuid4().hex[:10]}",
        "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 1}]},
    }
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(name, AUTHOR))
    assert created.status_code == 201, created.text
    return tenant, uuid.UUID(created.json()["id"])


def _suspend(api: ApiHarness, tenant: TenantHandle) -> None:
    with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_platform")
        conn.execute("UPDATE app.tenants SET status = 'suspended' WHERE id = %s", (tenant.id,))


def test_an_orchestration_launched_after_the_erasure_is_terminated_and_purged(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _StartingDurable
) -> None:
    # A start committed just before the tenant's suspension launched its orchestration after the erasure's last
    # purge: the erasure had answered 200, and the orchestration, its input the tenant's data, outlived the tenant.
    tenant, intent_id = _tenant_with_intent(api, "erased-before-launch")
    with tenant_transaction(tenant.id, pool=app_pool) as conn:
        found = get_tenant(conn, tenant.id)
        assert found is not None
        started = start_execution(
            conn,
            found.facts(),
            StartRequest(intent_id=intent_id, input={}, requester=Requester("tester", frozenset(), app_only=False)),
            max_concurrent=1000,
            authorize=lambda _item: None,
        )
    assert started.orchestration_input is not None
    _suspend(api, tenant)
    erased = _erase(api, tenant)
    assert erased.status_code == 200, erased.text
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 0

    asyncio.run(launch(durable, started, tenant.id))

    assert durable.instances == {}
    assert durable.purged == [str(started.execution.id)]


def _waits_on_a_lock(api: ApiHarness) -> bool:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = 'qp_app'"
        ).fetchone()
    return bool(row and row[0])


def _erased_while_it_waits(
    api: ApiHarness, tenant_id: uuid.UUID, pool: ThreadPoolExecutor, call: Callable[[], httpx.Response]
) -> Future[httpx.Response]:
    """`call`'s answer, sent on `pool` while the erasure holds the tenant's row; once it waits on that row, the
    tenant's rows are deleted, children before parents, and the erasure commits."""
    with psycopg.connect(api.admin_url, dbname="quantum") as erasing:
        erasing.execute("SELECT 1 FROM app.tenants WHERE id = %s FOR UPDATE", (tenant_id,))
        answer_of = pool.submit(call)
        deadline = time.monotonic() + 60
        while not answer_of.done() and not _waits_on_a_lock(api):
            assert time.monotonic() < deadline, "the request never waited on the tenant row"
            time.sleep(0.05)
        assert not answer_of.done(), answer_of.result().text
        for table in TENANT_TABLES:
            erasing.execute(f"DELETE FROM app.{table} WHERE tenant_id = %s", (tenant_id,))  # noqa: S608
        erasing.execute("DELETE FROM app.tenants WHERE id = %s", (tenant_id,))
        erasing.commit()
    return answer_of


def test_a_request_waiting_on_the_erased_tenant_is_answered_as_one_of_an_unknown_tenant(
    api: ApiHarness, durable: _StartingDurable
) -> None:
    # An execute that waited on the tenant row its erasure held found the tenant gone (its execution's foreign key):
    # the request answered 500.
    name = "erased-under-a-request"
    tenant, intent_id = _tenant_with_intent(api, name)
    path = f"/api/v1/intents/{intent_id}/execute"
    unknown = api.client.post(path, json={"input": {}}, headers=api.headers(str(uuid.uuid4()), AUTHOR))
    assert unknown.status_code == 401, unknown.text

    with ThreadPoolExecutor(1) as pool:
        execute = partial(api.client.post, path, json={"input": {}}, headers=api.headers(name, AUTHOR))
        answer = _erased_while_it_waits(api, tenant.id, pool, execute).result(60)

    assert answer.status_code == unknown.status_code, answer.text
    assert answer.json() == unknown.json()
    assert answer.headers["www-authenticate"] == unknown.headers["www-authenticate"]
    assert answer.headers["content-type"] == unknown.headers["content-type"]
    assert durable.instances == {}
    counts = _tenant_row_counts(api, tenant.id)
    assert set(counts.values()) == {0}, counts


def test_every_reference_to_a_tenant_is_known_by_its_name(api: ApiHarness) -> None:
    # The answer above tells a reference to the tenant row from others by its constraint's name alone.
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        rows = conn.execute(
            "SELECT conname, confrelid = 'app.tenants'::regclass FROM pg_constraint WHERE contype = 'f'"
        ).fetchall()
    to_tenants = {name for name, references_tenants in rows if references_tenants}
    assert to_tenants, "no foreign key references app.tenants"
    assert {name for name, _ in rows if name.endswith(TENANT_REFERENCE)} == to_tenants
