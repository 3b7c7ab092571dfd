# intent_ref: platform.telemetry
"""An outcome's telemetry (meters, span event, log line) is published once the transaction that recorded it has
committed, never for one that rolled back: a transaction run again (a timer's tenant share that failed on a lock
wait, a deadlock's victim) counts its outcome once. Every outcome is a span event, also one the sweeper records with
no span current (the `traces` rows of the workbook's Top errors and the runbook's queries)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg_pool import ConnectionPool

from shared import telemetry
from shared.db.session import retried_on_deadlock, tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine import sweeper
from shared.engine.steps import AttemptKey, StepSeed
from shared.observability import metrics, tracing
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_execution_sweeper import (
    AUTHOR,
    FakeDurable,
    Tenant,
    _allow_modules,
    _get,
    _moved,
    _recorded,
    _status,
)
from tests.integration.test_executions import _execution
from tests.integration.test_expiry_lock_order import _expire, _leased
from tests.integration.test_timer_lock_waits import _swept_while_a_child_row_is_held
from tests.unit.test_trace_roots import spans  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

# What Postgres raises in the transaction it picks as a deadlock's victim (SQLSTATE 40P01), raised on demand.
_DEADLOCK_VICTIM = "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$"


class _Meters:
    """The platform's counters and histograms: how many times each was given a value, per name, tenant and status
    (or outcome)."""

    def __init__(self) -> None:
        self.counted: Counter[tuple[str, str, str]] = Counter()

    def _note(self, name: str, attributes: dict[str, str]) -> None:
        status = attributes.get("status") or attributes.get("outcome") or ""
        self.counted[(name, attributes.get(tracing.TENANT_ID, ""), status)] += 1

    def meter(self, name: str, *_: Any) -> Any:
        meters = self

        class Recorder:
            def add(self, _: int, attributes: dict[str, str]) -> None:
                meters._note(name, attributes)

            def record(self, _: float, attributes: dict[str, str]) -> None:
                meters._note(name, attributes)

        return Recorder()


@pytest.fixture
def meters(monkeypatch: pytest.MonkeyPatch) -> _Meters:
    recorded = _Meters()
    monkeypatch.setattr(metrics, "_counter", recorded.meter)
    monkeypatch.setattr(metrics, "_histogram", recorded.meter)
    return recorded


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811
    return api.provision("telemetry-commit").id


def _lines(caplog: pytest.LogCaptureFixture, event: str, execution_id: uuid.UUID) -> list[dict[str, Any]]:
    found = [json.loads(r.getMessage()[len(telemetry.PREFIX) :]) for r in caplog.records if r.name == "qp.telemetry"]
    return [line for line in found if line["event"] == event and line.get("execution_id") == str(execution_id)]


def _events(exporter: InMemorySpanExporter, event: str, execution_id: uuid.UUID) -> list[ReadableSpan]:
    """The finished spans carrying `event` for `execution_id`, once per event."""
    return [
        span
        for span in exporter.get_finished_spans()
        for e in span.events
        if e.name == event and (e.attributes or {}).get("execution_id") == str(execution_id)
    ]


def test_the_line_waits_for_the_commit_and_a_rollback_publishes_nothing(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, meters: _Meters, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qp.telemetry")
    rolled_back = _execution(app_pool, tenant, path=["running"])
    with pytest.raises(RuntimeError), tenant_transaction(tenant, pool=app_pool) as conn:
        repo.transition(conn, rolled_back.id, "failed", error="boom")
        raise RuntimeError("the activity crashed before its transaction committed")
    assert _lines(caplog, "execution.failed", rolled_back.id) == []
    assert meters.counted[("qp.executions.ended", str(tenant), "failed")] == 0

    committed = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        repo.transition(conn, committed.id, "failed", error="boom")
        assert _lines(caplog, "execution.failed", committed.id) == []  # not before the commit
    assert len(_lines(caplog, "execution.failed", committed.id)) == 1
    assert meters.counted[("qp.executions.ended", str(tenant), "failed")] == 1


def test_a_sweep_rolled_back_on_a_lock_wait_and_run_again_counts_the_failure_once(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    meters: _Meters,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The sweeper ends the parent (its orchestration was terminated), then cancels its running child, whose row
    # another transaction holds past the timer's bounded lock wait: the tenant's share rolls back, the next run ends it.
    caplog.set_level(logging.INFO, logger="qp.telemetry")
    t = Tenant(api)
    parent, _, client = _swept_while_a_child_row_is_held(app_pool, t)
    assert _get(app_pool, t.id, parent).status == "running"  # rolled back whole
    assert _lines(caplog, "execution.failed", parent) == []
    assert meters.counted[("qp.executions.ended", str(t.id), "failed")] == 0

    asyncio.run(sweeper.sweep_tenant(t.id, client, pool=app_pool))  # the next timer run
    assert _get(app_pool, t.id, parent).status == "failed"
    assert len(_lines(caplog, "execution.failed", parent)) == 1
    assert meters.counted[("qp.executions.ended", str(t.id), "failed")] == 1


def test_a_deadlock_victim_run_again_counts_its_outcomes_once(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, meters: _Meters, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qp.telemetry")
    execution = _execution(app_pool, tenant, path=["running"])
    key = AttemptKey(execution.id, "build", "run", 1)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", "http.request", 1)])
        store.begin_attempt(conn, key, action="http.request", remote=False)
    runs: list[int] = []

    def record_the_failure() -> None:
        # As a completion route does, under retried_on_deadlock: the step's failure and the execution's end.
        with tenant_transaction(tenant, pool=app_pool) as conn:
            store.finish_attempt(conn, key, ok=False, error="HTTP 500", retryable=False)
            repo.transition(conn, execution.id, "failed", error="build failed")
            runs.append(1)
            if len(runs) == 1:
                conn.execute(_DEADLOCK_VICTIM)  # Postgres picks this transaction as a deadlock's victim

    retried_on_deadlock(record_the_failure)
    assert len(runs) == 2
    assert len(_lines(caplog, "step.failed", execution.id)) == 1
    assert len(_lines(caplog, "execution.failed", execution.id)) == 1
    assert meters.counted[("qp.step.duration", str(tenant), "failed")] == 1
    assert meters.counted[("qp.executions.ended", str(tenant), "failed")] == 1


def test_the_event_goes_on_the_span_current_when_the_outcome_was_recorded(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, spans: InMemorySpanExporter
) -> None:
    # The span open around the transaction (a request's, a module worker's): the event is on it, once.
    around = _execution(app_pool, tenant, path=["running"])
    with (
        tracing.tracer.start_as_current_span("request") as request,
        tenant_transaction(tenant, pool=app_pool) as conn,
    ):
        repo.transition(conn, around.id, "failed", error="boom")
    [span] = _events(spans, "execution.failed", around.id)
    assert span.context is not None and span.context.span_id == request.get_span_context().span_id

    # A span that ended before the commit (stalls.py opens one inside its transaction): the event gets a short span
    # of its own in that span's trace, a child of it, since an ended span takes no event.
    inside = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        with tracing.tracer.start_as_current_span("recorded") as recorded:
            repo.transition(conn, inside.id, "failed", error="boom")
    [span] = _events(spans, "execution.failed", inside.id)
    assert span.name == "telemetry execution.failed"
    assert span.parent is not None and span.parent.span_id == recorded.get_span_context().span_id
    assert span.context is not None and span.context.trace_id == recorded.get_span_context().trace_id
    assert span.attributes is not None and span.attributes[tracing.EXECUTION_ID] == str(inside.id)


def test_the_sweepers_ends_are_span_events_though_it_runs_with_no_span(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qp.telemetry")
    t = Tenant(api)
    crashed = _moved(app_pool, t.id, t.intent, ["running"])  # its orchestration failed without recording its end
    gated, _ = _recorded(app_pool, t.id, t.intent)  # a stalled start that can no longer be rebuilt
    client = FakeDurable({crashed: _status("Failed", "Orchestrator function failed: KeyError")})
    _allow_modules(api, t.id, [])
    try:
        result = asyncio.run(sweeper.sweep_tenant(t.id, client, pool=app_pool))  # what the sweeper timer runs
    finally:
        _allow_modules(api, t.id, ["wait"])
    assert result.ended == 2
    for execution_id in (crashed, gated):
        assert _get(app_pool, t.id, execution_id).status == "failed"
        assert len(_lines(caplog, "execution.failed", execution_id)) == 1
        [span] = _events(spans, "execution.failed", execution_id)  # the traces row Top errors reads
        assert span.name == "telemetry execution.failed" and span.parent is None
        assert span.attributes is not None
        assert (span.attributes[tracing.TENANT_ID], span.attributes[tracing.EXECUTION_ID]) == (
            str(t.id),
            str(execution_id),
        )


def test_a_lease_the_sweeper_expires_is_a_step_failed_span_event(
    pg: Any,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qp.telemetry")
    execution = _execution(app_pool, tenant, path=["running"])
    key = AttemptKey(execution.id, "s1", "run", 1)
    _leased(app_pool, tenant, [key], f"exp-{uuid.uuid4().hex[:6]}")
    _expire(pg.admin_url, [key])  # its worker stopped heartbeating
    asyncio.run(sweeper.expire_work_leases(FakeDurable(), pool=app_pool, control_pool=control_pool))
    [line] = _lines(caplog, "step.failed", execution.id)
    assert (line["step_id"], line["reason"]) == ("s1", "timed_out")
    [span] = _events(spans, "step.failed", execution.id)
    assert span.name == "telemetry step.failed" and span.parent is None
    assert span.attributes is not None and span.attributes[tracing.STEP_ID] == "s1"


def test_a_publication_that_fails_after_the_commit_does_not_fail_the_committed_change(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("meter provider broken")

    monkeypatch.setattr(telemetry, "_count", broken)
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:  # raises nothing: the change has committed
        repo.transition(conn, execution.id, "failed", error="boom")
    assert _get(app_pool, tenant, execution.id).status == "failed"
    assert any("telemetry event execution.failed not published" in r.getMessage() for r in caplog.records)


def test_a_stall_recorded_in_a_transaction_that_rolls_back_is_counted_once_by_the_sweep_that_commits_it(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    meters: _Meters,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from shared.engine import stalls

    caplog.set_level(logging.INFO, logger="qp.telemetry")
    name = f"stall-once-{uuid.uuid4().hex[:8]}"
    tenant_id = api.provision(name, allowed_modules=["artifact.write"]).id
    steps = [
        {"id": f"slow{i}", "timeout_s": 1, "action": "artifact.write", "name": f"a{i}.json", "content": {"a": i}}
        for i in (1, 2)
    ]
    body = {"name": name, "definition": {"target": "staging", "steps": steps}}
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(name, AUTHOR))
    assert created.status_code == 201, created.text
    execution_id = _moved(app_pool, tenant_id, uuid.UUID(created.json()["id"]), ["running"], quiet=False)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        for i in (1, 2):
            key = AttemptKey(execution_id, f"slow{i}", "run", 1)
            store.begin_attempt(conn, key, action="artifact.write", remote=False)
    time.sleep(1.2)  # both attempts past their 1 s timeout: overdue, so stalled

    real_append = repo.append_event
    stalled = {"n": 0}

    def second_stall_fails(conn: Any, *args: Any, **kwargs: Any) -> int:
        if args[1] == "execution_stalled":
            stalled["n"] += 1
            if stalled["n"] == 2:  # a statement after the first stall's telemetry fails: the whole record rolls back
                raise RuntimeError("connection lost before commit")
        return real_append(conn, *args, **kwargs)

    monkeypatch.setattr(repo, "append_event", second_stall_fails)
    with pytest.raises(RuntimeError):
        stalls.record_stalls(tenant_id, execution_id, grace_s=0.0, pool=app_pool)
    monkeypatch.setattr(repo, "append_event", real_append)
    assert _lines(caplog, "execution.stalled", execution_id) == []

    assert len(stalls.record_stalls(tenant_id, execution_id, grace_s=0.0, pool=app_pool)) == 2
    counted = sum(n for (name_, tenant_, _), n in meters.counted.items() if name_ == "qp.executions.stalled")
    assert counted == 2 and len(_lines(caplog, "execution.stalled", execution_id)) == 2
