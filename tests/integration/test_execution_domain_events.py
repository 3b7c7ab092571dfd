# intent_ref: platform.events
"""Executions and steps record their domain events in the outbox, in the same transaction, once per real change;
the outcomes the monitoring counts are logged as telemetry lines once too."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared import telemetry
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision("events").id


def _outbox(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[tuple[str, str, Any]]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        rows = conn.execute(
            "SELECT event_type, subject, data FROM app.outbox WHERE data->>'execution_id' = %s ORDER BY position",
            (str(execution_id),),
        ).fetchall()
    return [(row["event_type"], row["subject"], row["data"]) for row in rows]


def _telemetry(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [r.getMessage() for r in caplog.records if r.name == "qp.telemetry"]
    assert all(line.startswith(telemetry.PREFIX) and "\n" not in line for line in lines)
    return [json.loads(line[len(telemetry.PREFIX) :]) for line in lines]


def _started_step(pool: ConnectionPool[Any], tenant_id: uuid.UUID, action: str = "http.request") -> AttemptKey:
    execution = _execution(pool, tenant_id, path=["running"])
    key = AttemptKey(execution.id, "build", "run", 1)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", action, 3)])
        store.begin_attempt(conn, key, action=action, remote=False)
    return key


def test_every_transition_records_its_execution_event_and_an_end_its_telemetry(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qp.telemetry")
    execution = _execution(app_pool, tenant, path=["running", "waiting", "running"])
    assert _telemetry(caplog) == []  # nothing ended yet
    with tenant_transaction(tenant, pool=app_pool) as conn:
        repo.transition(conn, execution.id, "failed", error="deploy failed")
    events = _outbox(app_pool, tenant, execution.id)
    assert [event_type for event_type, _, _ in events] == [
        "execution.started",
        "execution.waiting",
        "execution.resumed",
        "execution.failed",
    ]
    assert {subject for _, subject, _ in events} == {f"executions/{execution.id}"}
    assert events[-1][2] == {
        "execution_id": str(execution.id),
        "intent_id": str(execution.intent_id),
        "intent_version": 1,
        "target": "staging",
        "from": "running",
        "status": "failed",
        "error": "deploy failed",
    }
    [line] = _telemetry(caplog)
    assert {k: line[k] for k in ("event", "tenant_id", "execution_id", "status", "error")} == {
        "event": "execution.failed",
        "tenant_id": str(tenant),
        "execution_id": str(execution.id),
        "status": "failed",
        "error": "deploy failed",
    }
    assert line["duration_ms"] >= 0


def test_a_rolled_back_transition_leaves_no_event(app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    execution = _execution(app_pool, tenant)
    with pytest.raises(RuntimeError), tenant_transaction(tenant, pool=app_pool) as conn:
        repo.transition(conn, execution.id, "running")
        raise RuntimeError("the activity crashed before its transaction committed")
    assert _outbox(app_pool, tenant, execution.id) == []


def test_a_result_delivered_twice_records_one_step_event_and_one_telemetry_line(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    key = _started_step(app_pool, tenant)
    caplog.set_level(logging.INFO, logger="qp.telemetry")
    for _ in range(2):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            store.finish_attempt(conn, key, ok=True, output={"status": 200})
    steps = [e for e in _outbox(app_pool, tenant, key.execution_id) if e[0].startswith("step.")]
    assert len(steps) == 1
    event_type, subject, data = steps[0]
    assert (event_type, subject) == ("step.completed", f"executions/{key.execution_id}/steps/build")
    assert {k: data[k] for k in ("execution_id", "step_id", "action", "attempt")} == {
        "execution_id": str(key.execution_id),
        "step_id": "build",
        "action": "http.request",
        "attempt": 1,
    }
    assert "output" not in data  # outputs stay in the execution's record (they can be large, or blobs)
    [line] = _telemetry(caplog)
    assert (line["event"], line["tenant_id"], line["step_id"], line["action"]) == (
        "step.completed",
        str(tenant),
        "build",
        "http.request",
    )
    assert isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0


def test_failed_and_timed_out_attempts_are_step_failed_and_a_cancel_is_not(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qp.telemetry")
    failed, timed_out, abandoned = (_started_step(app_pool, tenant) for _ in range(3))
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.finish_attempt(conn, failed, ok=False, error="HTTP 500")
        store.finish_attempt(conn, timed_out, ok=False, error="no result in 30 s", state="timed_out")
        store.finish_attempt(conn, abandoned, ok=False, error="cancelled", retryable=False, state="abandoned")
        # What the orchestrator's abandon record does next (an abandoned attempt leaves its step as it was, ADR 0015).
        assert store.move_step(
            conn, abandoned.execution_id, "build", "cancelled", ("running",), finished=True, error="cancelled"
        )

    def step_events(key: AttemptKey) -> list[tuple[str, Any]]:
        events = _outbox(app_pool, tenant, key.execution_id)
        return [(t, d.get("reason")) for t, _, d in events if t.startswith("step.")]

    assert step_events(failed) == [("step.failed", "failed")]
    assert step_events(timed_out) == [("step.failed", "timed_out")]
    assert step_events(abandoned) == [("step.cancelled", None)]
    lines = _telemetry(caplog)
    assert [(line["event"], line["execution_id"], line["reason"]) for line in lines] == [
        ("step.failed", str(failed.execution_id), "failed"),
        ("step.failed", str(timed_out.execution_id), "timed_out"),
    ]


def test_compensation_results_are_their_own_events(app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    key = _started_step(app_pool, tenant)
    undo = AttemptKey(key.execution_id, "build", "compensate", 1)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.finish_attempt(conn, key, ok=True, output={})
        store.begin_attempt(conn, undo, action="http.request", remote=False)
        store.finish_attempt(conn, undo, ok=True, output={})
    assert [t for t, _, _ in _outbox(app_pool, tenant, key.execution_id) if t.startswith("step.")] == [
        "step.completed",
        "step.compensated",
    ]
