# intent_ref: platform.execution
"""The sweeper's end of an execution ends every attempt still out, a queued remote compensation too, so nothing is
leased or recorded after the execution's end (ADR 0027, amendment 2026-12-05)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine import sweeper, work_queue
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


def test_the_sweepers_end_abandons_a_queued_compensation_before_the_end(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, action = new_tenant(), f"rollback-{uuid.uuid4().hex[:6]}"
    execution = _execution(app_pool, tenant, path=["running", "compensating"])
    key = AttemptKey(execution.id, "deploy", "compensate", 1)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("deploy", "deploy-to-kubernetes", 1)])
        store.begin_attempt(conn, key, action=action, remote=True)
        work_queue.enqueue(conn, key, action=action, params={"ns": "prod"}, timeout_s=600)

    assert sweeper.end_execution(tenant, execution.id, "orchestration was terminated", pool=app_pool) is not None

    with tenant_transaction(tenant, pool=app_pool) as conn:
        attempt = store.get_attempt(conn, key)
        steps = {step["step_id"]: step["state"] for step in store.list_steps(conn, execution.id)}
        events = [(event.type, event.step_id) for event in repo.events_after(conn, execution.id, 0, 100)]
        open_items, _ = work_queue.list_items(conn, execution_id=execution.id)
        leases = work_queue.lease(conn, tenant, actions=[action], max_items=5, lease_s=60, worker="w").leases
    assert attempt is not None and (attempt.state, attempt.error) == ("abandoned", "orchestration was terminated")
    assert steps == {"deploy": "compensation_failed"}
    assert events[-2:] == [("compensation_failed", "deploy"), ("execution_failed", None)]
    assert open_items == [] and leases == []
