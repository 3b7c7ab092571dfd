# intent_ref: platform.execution
"""A stall is one attempt of one phase: a compensation attempt's stall is recorded even when the run attempt of the
same number was recorded stalled before (matched on step and attempt only, the run's record hid it)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import stalls
from shared.engine import steps as store
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_stall_records import _overdue

pytestmark = pytest.mark.integration


def _stalled(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[tuple[Any, ...]]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return [
            (event.step_id, event.data.get("phase"), event.data.get("attempt"))
            for event in repo.events_after(conn, execution_id, 0, 100)
            if event.type == "execution_stalled"
        ]


def test_a_compensation_attempt_stalled_after_the_run_attempt_of_its_number_is_recorded(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    tenant_id, execution_id = _overdue(api, app_pool)
    first = stalls.record_stalls(tenant_id, execution_id, grace_s=0.0, pool=app_pool)
    assert [(s.step_id, s.attempt, s.reason.split(" ")[0]) for s in first] == [("slow", 1, "attempt")]
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        store.finish_attempt(conn, AttemptKey(execution_id, "slow", "run", 1), ok=True, output={"a": 1})
        key = AttemptKey(execution_id, "slow", "compensate", 1)
        store.begin_attempt(conn, key, action="artifact.write", remote=False)
    time.sleep(1.2)  # past its compensation's timeout (the step's, 1 s)
    second = stalls.record_stalls(tenant_id, execution_id, grace_s=0.0, pool=app_pool)
    assert [(s.step_id, s.attempt) for s in second] == [("slow", 1)]
    assert second[0].reason.startswith("compensation attempt 1 of slow is ")
    assert second[0].phase == "compensate"
    assert stalls.record_stalls(tenant_id, execution_id, grace_s=0.0, pool=app_pool) == []  # each once
    assert _stalled(app_pool, tenant_id, execution_id) == [("slow", "run", 1), ("slow", "compensate", 1)]
