# intent_ref: platform.execution
"""The sweeper's memory of what it checked: a tenant's quiet executions are checked in turn, never at random, so a
dead one behind many legitimate waits is found within ceil(N / limit) runs; tenants come least recently checked
first."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import sweeper
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_execution_sweeper import FakeDurable, Tenant, _get, _moved, _status

pytestmark = pytest.mark.integration

LIMIT = sweeper.MAX_CHECKS_PER_TENANT


def test_every_quiet_execution_is_checked_once_before_any_is_checked_twice(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    t = Tenant(api)
    waiting = [_moved(app_pool, t.id, t.intent, ["running", "waiting"]) for _ in range(2 * LIMIT + 1)]
    dead = _moved(app_pool, t.id, t.intent, ["running"])  # quiet the shortest, its orchestration gone unrecorded
    client = FakeDurable({execution_id: _status("Running") for execution_id in waiting})
    quiet = len(waiting) + 1
    runs = math.ceil(quiet / LIMIT)

    for _ in range(runs):
        asyncio.run(sweeper.sweep_tenant(t.id, client, pool=app_pool))

    first_round = client.asked[:quiet]
    assert sorted(first_round) == sorted(str(execution_id) for execution_id in [*waiting, dead])
    assert len(client.asked) == runs * LIMIT  # the last run went round again, starting over with the first checked
    assert client.asked[quiet:] == first_round[: len(client.asked) - quiet]
    assert _get(app_pool, t.id, dead).status == "failed"  # found within ceil(N / limit) runs, not by chance


def test_an_execution_whose_check_failed_is_not_asked_first_again(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    t = Tenant(api)
    quiet = [_moved(app_pool, t.id, t.intent, ["running", "waiting"]) for _ in range(3)]

    class Broken(FakeDurable):
        """A store that fails on the first execution's status: that one fails the tenant's run."""

        async def get_status(self, instance_id: str) -> Any:
            self.asked.append(instance_id)
            if instance_id == str(quiet[0]):
                raise RuntimeError("task hub store unavailable")
            return _status("Running")

    client = Broken()
    with pytest.raises(RuntimeError):
        asyncio.run(sweeper.sweep_tenant(t.id, client, budget=2, pool=app_pool))
    asyncio.run(sweeper.sweep_tenant(t.id, client, budget=2, pool=app_pool))
    assert client.asked == [str(quiet[0]), str(quiet[1]), str(quiet[2])]


def test_tenants_come_least_recently_checked_first(
    api: ApiHarness, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    checked, unchecked, older = Tenant(api), Tenant(api), Tenant(api)
    waits = {
        tenant.id: _moved(app_pool, tenant.id, tenant.intent, ["running", "waiting"])
        for tenant in (checked, unchecked, older)
    }
    with tenant_transaction(older.id, pool=app_pool) as conn:  # checked an hour ago, as a run would have recorded it
        conn.execute("UPDATE app.executions SET swept_at = now() - interval '1 hour'")
    asyncio.run(sweeper.sweep_tenant(checked.id, FakeDurable({waits[checked.id]: _status("Running")}), pool=app_pool))

    found = sweeper.stuck_tenants(10_000, control_pool=control_pool)
    assert found.index(unchecked.id) < found.index(older.id) < found.index(checked.id)
