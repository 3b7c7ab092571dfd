# intent_ref: platform.execution
"""An execution whose pinned version's stored definition the current model refuses (pydantic's ValidationError, not
a StartError) no longer fails its tenant's sweep: a running one is judged by the default timeout, a stalled start
ends failed as one that can no longer start. Real database; only the orchestration side is a stand-in."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import start as engine
from shared.engine import sweeper
from shared.engine.protocol import ORCHESTRATOR, StepPlan
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

# test_executions._execution pins a version whose stored definition has no steps, which the model refuses.
_BACKDATE_CLAIM = "UPDATE app.executions SET start_claimed_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"


class Durable:
    """Instances listed run; any other does not exist. Nothing is started, raised or terminated here."""

    def __init__(self, running: set[uuid.UUID]) -> None:
        self.running = {str(instance) for instance in running}
        self.asked: list[str] = []

    async def get_status(self, instance_id: str) -> DurableOrchestrationStatus:
        self.asked.append(instance_id)
        if instance_id not in self.running:
            return DurableOrchestrationStatus.from_json("")  # the SDK's answer to a 404
        return DurableOrchestrationStatus.from_json(
            {
                "name": ORCHESTRATOR,
                "instanceId": instance_id,
                "runtimeStatus": "Running",
                "createdTime": "2026-01-01T00:00:00Z",
            }
        )

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        raise AssertionError("an execution whose version does not validate is not started")

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        raise AssertionError("nothing is told here")

    async def terminate(self, instance_id: str, reason: str) -> None:
        raise AssertionError("nothing is terminated here")


def test_running_executions_of_a_version_that_no_longer_validates_are_all_checked(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Before: the stall check rebuilt the run's plan and let the ValidationError through; the tenant's sweep failed
    at the first such execution, every run it came round."""
    tenant = new_tenant()
    first, second = (_execution(app_pool, tenant, path=["running"]) for _ in range(2))
    client = Durable({first.id, second.id})

    result = asyncio.run(sweeper.sweep_tenant(tenant, client, quiet_s=0.0, pool=app_pool))

    assert (result.ended, result.checked) == (0, 2)
    assert sorted(client.asked) == sorted([str(first.id), str(second.id)])


def test_a_stalled_start_of_a_version_that_no_longer_validates_ends_failed(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Before: its rebuild raised past the sweep, so it stayed pending, holding a quota slot, and failed its tenant's
    sweep again at every run once its claim went stale."""
    tenant = new_tenant()
    stalled = _execution(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute(_BACKDATE_CLAIM, (stalled.id,))
    client = Durable(set())

    result = asyncio.run(sweeper.sweep_tenant(tenant, client, pool=app_pool))

    with tenant_transaction(tenant, pool=app_pool) as conn:
        ended = repo.get_execution(conn, stalled.id)
    assert (result.started, result.ended) == (0, 1)
    assert ended.status == "failed"
    assert ended.error is not None and ended.error.startswith("the orchestration could not be started:")


def test_a_stalled_start_refused_by_another_model_is_not_ended_as_unstartable(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a stored definition the model refuses makes a start one that can never start. Another model's refusal
    while its input is rebuilt is a fault: it fails the tenant's sweep (logged by `sweep`) and leaves the execution
    pending for a later run. Before: it ended failed, its caller told it could no longer start."""
    tenant = new_tenant()
    stalled = _execution(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute(_BACKDATE_CLAIM, (stalled.id,))

    def refused(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        StepPlan.model_validate({"kind": "module", "timeout_s": "soon"})
        raise AssertionError("the plan above is refused")

    monkeypatch.setattr(engine, "rebuild_input", refused)

    with pytest.raises(pydantic.ValidationError):
        asyncio.run(sweeper.sweep_tenant(tenant, Durable(set()), pool=app_pool))

    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert repo.get_execution(conn, stalled.id).status == "pending"
