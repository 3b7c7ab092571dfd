# intent_ref: platform.execution
"""The sweeper's run on a slow or hung task hub: no tenant's sweep nor status call starts past the run's budget, what
was not reached keeps its place, and a status call cut off by its bound is a status unknown, never "no such
instance" (ADR 0014)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import sweeper
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_execution_sweeper import FakeDurable, Tenant, _get, _moved, _recorded, _status

pytestmark = pytest.mark.integration

LATENCY_S = 0.4


class SlowDurable(FakeDurable):
    """A task hub that takes LATENCY_S to answer each status call, and never answers for the `hung` instances."""

    def __init__(self, statuses: dict[uuid.UUID, DurableOrchestrationStatus], hung: set[uuid.UUID]) -> None:
        super().__init__(statuses)
        self.hung = {str(instance_id) for instance_id in hung}

    async def get_status(self, instance_id: str) -> DurableOrchestrationStatus:
        await asyncio.sleep(3600 if instance_id in self.hung else LATENCY_S)
        return await super().get_status(instance_id)


def _swept(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> bool:
    """Whether a sweep recorded the execution as checked (and so moved it behind the others)."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        row = conn.execute("SELECT swept_at FROM app.executions WHERE id = %s", (execution_id,)).fetchone()
    assert row is not None
    return row["swept_at"] is not None


async def _nothing(*_: Any, **__: Any) -> int:
    return 0


def test_a_run_on_a_slow_task_hub_stops_at_its_budget_and_what_it_did_not_reach_keeps_its_place(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Tenant(api), Tenant(api)
    quiet = {
        t.id: [_moved(app_pool, t.id, t.intent, ["running", "waiting"]) for _ in range(4)] for t in (first, second)
    }
    client = SlowDurable(dict.fromkeys([*quiet[first.id], *quiet[second.id]], _status("Running")), set())
    # This run's tenants only: the other steps and tenants of the database are other tests'.
    monkeypatch.setattr(sweeper, "stuck_tenants", lambda **_: [first.id, second.id])
    monkeypatch.setattr(sweeper, "expire_work_leases", _nothing)
    monkeypatch.setattr(sweeper, "raise_verdicts_again", _nothing)
    # The orchestrations recorded as outliving their erased tenant are other tests' (and this stand-in has no purge).
    monkeypatch.setattr(sweeper, "purge_erased_orchestrations", _nothing)
    monkeypatch.setattr(sweeper, "RUN_BUDGET_S", 2.5 * LATENCY_S)

    began = time.monotonic()
    result = asyncio.run(sweeper.sweep(client, pool=app_pool))
    took = time.monotonic() - began
    # Three calls begin within the budget (at 0, 0.4 and 0.8 s of 1 s; fewer on a slow machine), none after it: the
    # first tenant's last execution and the second tenant are not reached.
    asked = [uuid.UUID(instance_id) for instance_id in client.asked]
    assert 1 <= len(asked) <= 3 and asked == quiet[first.id][: len(asked)] and result.checked == len(asked)
    assert took < 8 * LATENCY_S * 0.75
    # The executions not asked after were not recorded as checked: they come first in a later run.
    for t in (first, second):
        assert [_swept(app_pool, t.id, e) for e in quiet[t.id]] == [e in asked for e in quiet[t.id]]


def test_a_status_call_the_task_hub_never_answers_is_a_status_unknown(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bounded only by the client's 240 s total timeout, a hung call held up the tenant's sweep and every tenant after.
    t = Tenant(api)
    stalled, _ = _recorded(app_pool, t.id, t.intent)
    hung = _moved(app_pool, t.id, t.intent, ["running", "waiting"])
    answered = _moved(app_pool, t.id, t.intent, ["running", "waiting"])
    client = SlowDurable({answered: _status("Running")}, {stalled, hung})
    monkeypatch.setattr(sweeper, "STATUS_CALL_BOUND_S", 2 * LATENCY_S)

    async def run() -> sweeper.TenantSweep:
        return await asyncio.wait_for(sweeper.sweep_tenant(t.id, client, pool=app_pool), 30)

    result = asyncio.run(run())
    assert set(client.asked) == {str(answered)} and result.checked == 3
    # Unknown, not "no such instance": the stalled start is not started again, the quiet execution not ended.
    assert client.started == [] and result.ended == 0
    assert (_get(app_pool, t.id, stalled).status, _get(app_pool, t.id, hung).status) == ("pending", "waiting")
