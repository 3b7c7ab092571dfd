# intent_ref: platform.execution
"""A dispatch answers the results of its quick built-in attempts itself (ADR 0034): exactly one of the dispatch and
the module worker hands each result over, whichever way their transactions meet."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.config import get_settings
from shared.db.migrate import apply_migrations
from shared.db.session import tenant_transaction
from shared.engine import control, machine, progress, worker
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.dispatch_results import await_results
from shared.engine.event_wakeup import forget_event_wakeup
from shared.engine.machine import Verdict
from shared.engine.protocol import WorkItem
from shared.engine.steps import Attempt, AttemptKey, StepSeed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_module_worker_claims import (  # noqa: F401  # batches_held_whole: the fixture
    BOUND_S,
    _dispatched,
    _Echo,
    _Raiser,
    batches_held_whole,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> Iterator[uuid.UUID]:
    yield api.provision("dispatch-results").id
    # The waits started this process's listener on the harness's database: it leaves with the harness.
    forget_event_wakeup()


def _awaited(pool: ConnectionPool[Any], tenant_id: uuid.UUID, action: str) -> WorkItem:
    """An attempt as a waiting dispatch records it, and its work item."""
    item = _dispatched(pool, tenant_id, action, awaited=True)
    assert _delivery(pool, item) == "awaited"
    return item


def _key(item: WorkItem) -> AttemptKey:
    return AttemptKey(item.execution_id, item.step_id, item.phase, item.attempt)


def _take(pool: ConnectionPool[Any], item: WorkItem, *, final: bool) -> list[Attempt]:
    with tenant_transaction(item.tenant_id, pool=pool) as conn:
        return store.take_results(conn, [_key(item)], final=final)


def _delivery(pool: ConnectionPool[Any], item: WorkItem) -> str | None:
    with tenant_transaction(item.tenant_id, pool=pool) as conn:
        attempt = store.get_attempt(conn, _key(item))
    assert attempt is not None
    return attempt.delivery


def _run(item: WorkItem, echo: _Echo, raiser: _Raiser) -> int:
    return asyncio.run(worker.process_batch([item.model_dump_json()], raiser, {echo.action: echo}))


def test_an_awaited_result_is_answered_by_the_dispatch_and_not_raised(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    echo, raiser = _Echo(), _Raiser()
    item = _awaited(app_pool, tenant, echo.action)
    assert _take(app_pool, item, final=False) == []  # no result yet: nothing taken, nothing released
    assert _delivery(app_pool, item) == "awaited"
    assert _run(item, echo, raiser) == 0 and raiser.raised == []
    (taken,) = _take(app_pool, item, final=False)
    assert taken.delivery == "answered" and taken.verdict() == {"ok": True, "output": {"ran": echo.runs[0]}}
    # A re-run of the dispatch (its answer was lost in a crash) answers it again; a redelivered item raises nothing.
    assert [a.verdict() for a in _take(app_pool, item, final=True)] == [taken.verdict()]
    assert _run(item, echo, raiser) == 0 and raiser.raised == [] and len(echo.runs) == 1


def test_an_attempt_released_before_its_result_is_raised_by_its_recorder(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    echo, raiser = _Echo(), _Raiser()
    item = _awaited(app_pool, tenant, echo.action)
    assert _take(app_pool, item, final=True) == []
    assert _delivery(app_pool, item) == "released"
    assert _run(item, echo, raiser) == 1
    assert raiser.to(item.execution_id) == [{"ok": True, "output": {"ran": echo.runs[0]}}]
    assert _take(app_pool, item, final=True) == []  # a re-run of the dispatch does not take it back


def test_a_result_committing_while_the_dispatch_releases_is_answered_by_the_dispatch(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    item = _awaited(app_pool, tenant, "test.echo")
    taken: list[list[Attempt]] = []
    with tenant_transaction(tenant, pool=app_pool) as conn:
        recorded, applied = store.finish_attempt(conn, _key(item), ok=True, output={"n": 1})
        release = threading.Thread(target=lambda: taken.append(_take(app_pool, item, final=True)), daemon=True)
        release.start()
        release.join(0.5)
        assert release.is_alive(), "the release must wait for the result's row lock"
    release.join(BOUND_S)
    assert applied and not recorded.raised_by_recorder  # the recorder leaves it to the dispatch ...
    assert [[a.verdict() for a in batch] for batch in taken] == [[{"ok": True, "output": {"n": 1}}]]  # ... which has it


def test_a_release_committing_while_the_result_is_recorded_leaves_it_to_the_recorder(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    item = _awaited(app_pool, tenant, "test.echo")
    recorded: list[Attempt] = []

    def record() -> None:
        with tenant_transaction(tenant, pool=app_pool) as conn:
            recorded.append(store.finish_attempt(conn, _key(item), ok=True, output={"n": 2})[0])

    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert store.take_results(conn, [_key(item)], final=True) == []
        result = threading.Thread(target=record, daemon=True)
        result.start()
        result.join(0.5)
        assert result.is_alive(), "the result must wait for the release's row lock"
    result.join(BOUND_S)
    assert [a.delivery for a in recorded] == ["released"] and recorded[0].raised_by_recorder
    assert _take(app_pool, item, final=True) == []


def test_the_wait_wakes_on_the_result_and_releases_at_its_end(app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    echo, raiser = _Echo(), _Raiser()
    item = _awaited(app_pool, tenant, echo.action)
    worker_thread = threading.Timer(0.2, _run, (item, echo, raiser))
    worker_thread.start()
    began = time.monotonic()
    answered = await_results(tenant, [_key(item)], BOUND_S)
    waited = time.monotonic() - began
    worker_thread.join(BOUND_S)
    assert answered == {"run:work:1": Verdict(ok=True, output={"ran": echo.runs[0]})}
    assert waited < BOUND_S / 2, "woken by the result's notification, not by the end of the wait"
    assert raiser.raised == []
    # Nothing recorded within the wait: released, and the worker raises it when it comes.
    late = _awaited(app_pool, tenant, echo.action)
    assert await_results(tenant, [_key(late)], 0.1) == {}
    assert _delivery(app_pool, late) == "released"
    assert _run(late, echo, raiser) == 1 and len(raiser.to(late.execution_id)) == 1


# ------------------------------------------------------------------------------- the last level records the success
@pytest.fixture
def long_wait(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Dispatches wait as long as they may (5 s) for their results, so a result the test records comes in time."""
    monkeypatch.setenv("QP_DISPATCH_RESULT_WAIT_MS", "5000")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _last_level(pg: Any, pool: ConnectionPool[Any], tenant_id: uuid.UUID) -> machine.DispatchSteps:
    """A running execution whose step `a` succeeded; the batch that starts its last step `b` (event.emit)."""
    apply_migrations(pg.owner_url, Path("devhost/eventhubs/migrations"), schema="devhost_eventhubs")
    execution = _execution(pool, tenant_id, path=["running"])
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(
            conn, execution.id, [StepSeed("a", "event.emit", 1, {"n": 1}, True), StepSeed("b", "event.emit", 1)]
        )
    start = machine.StepStart(
        step_id="b",
        phase=machine.Phase.RUN,
        attempt=1,
        kind=machine.StepKind.MODULE,
        action="event.emit",
        params={"type": "t.x", "data": {}},
    )
    return machine.DispatchSteps(
        execution_id=str(execution.id), tenant_id=str(tenant_id), starts=[start], finish={"a": {"n": 1}}
    )


def _result_when_started(
    tenant_id: uuid.UUID, batch: machine.DispatchSteps, ok: bool, before: Callable[[], None] = lambda: None
) -> threading.Thread:
    """As the module worker would: once the attempt is recorded, record its result (after `before`)."""
    key = AttemptKey(uuid.UUID(batch.execution_id), "b", "run", 1)

    def record() -> None:
        for _ in range(int(BOUND_S / 0.01)):
            with tenant_transaction(tenant_id) as conn:
                if store.get_attempt(conn, key) is not None:
                    break
            time.sleep(0.01)
        before()
        with tenant_transaction(tenant_id) as conn:
            store.finish_attempt(conn, key, ok=ok, output={"n": 2}, error=None if ok else "boom")

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


def _status(pool: ConnectionPool[Any], tenant_id: uuid.UUID, batch: machine.DispatchSteps) -> repo.Execution:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return repo.get_execution(conn, uuid.UUID(batch.execution_id))


def test_the_last_levels_dispatch_records_the_success_with_its_results_and_answers_the_same_when_run_again(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID, long_wait: None
) -> None:
    batch = _last_level(pg, app_pool, tenant)
    recorder = _result_when_started(tenant, batch, ok=True)
    answer = progress.dispatch_steps(batch)
    recorder.join(BOUND_S)
    assert answer.status is machine.Status.SUCCEEDED
    assert answer.results == {"run:b:1": machine.Verdict(ok=True, output={"n": 2})}
    execution = _status(app_pool, tenant, batch)
    assert (execution.status, execution.output) == ("succeeded", {"a": {"n": 1}, "b": {"n": 2}})
    # Its answer lost in a crash, the dispatch runs again: the same answer, nothing recorded twice.
    assert progress.dispatch_steps(batch) == answer
    with tenant_transaction(tenant, pool=app_pool) as conn:
        completed = [e for e in repo.events_after(conn, execution.id, 0, 100) if e.type == "execution_completed"]
    assert len(completed) == 1


@pytest.mark.parametrize("how", ["a result failed", "a cancel was requested"])
def test_the_last_levels_dispatch_leaves_the_end_to_the_orchestration_unless_all_is_well(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID, long_wait: None, how: str
) -> None:
    batch = _last_level(pg, app_pool, tenant)
    execution_id = uuid.UUID(batch.execution_id)

    def cancel() -> None:
        with tenant_transaction(tenant) as conn:
            control.request_cancel(conn, execution_id, "tester")

    ok = how != "a result failed"
    recorder = _result_when_started(tenant, batch, ok=ok, before=cancel if ok else lambda: None)
    answer = progress.dispatch_steps(batch)
    recorder.join(BOUND_S)
    assert answer.status is machine.Status.RUNNING and list(answer.results) == ["run:b:1"]
    assert answer.results["run:b:1"].ok is ok
    assert _status(app_pool, tenant, batch).status == "running"


def test_the_last_levels_success_waits_for_a_cancel_being_recorded_and_then_leaves_the_end_to_the_orchestration(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    batch = _last_level(pg, app_pool, tenant)
    execution_id = uuid.UUID(batch.execution_id)
    finish = progress._Finish(execution_id, {"a": {"n": 1}}, {"run:b:1": "b"})

    def record() -> None:
        with tenant_transaction(tenant) as conn:
            finish.record(conn, {"run:b:1": Verdict(ok=True, output={"n": 2})})

    recorder = threading.Thread(target=record, daemon=True)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        control.request_cancel(conn, execution_id, "tester")
        recorder.start()
        time.sleep(0.3)  # the success's transaction has read the execution by now, or waits to
    recorder.join(BOUND_S)
    assert not recorder.is_alive()
    assert finish.moved is None
    assert _status(app_pool, tenant, batch).status == "running"


# ------------------------------------------------------------------------------- a dispatch carries on (ADR 0036)
def _results_as_started(tenant_id: uuid.UUID, execution_id: uuid.UUID, steps: list[str]) -> threading.Thread:
    """As the module worker would: record each step's result once its attempt is recorded, in order."""

    def record() -> None:
        for step in steps:
            key = AttemptKey(execution_id, step, "run", 1)
            for _ in range(int(BOUND_S / 0.01)):
                with tenant_transaction(tenant_id) as conn:
                    if store.get_attempt(conn, key) is not None:
                        break
                time.sleep(0.01)
            with tenant_transaction(tenant_id) as conn:
                store.finish_attempt(conn, key, ok=True, output={"step": step}, error=None)

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


def test_a_carrying_dispatch_runs_the_next_level_itself_and_answers_the_same_when_run_again(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID, long_wait: None
) -> None:
    apply_migrations(pg.owner_url, Path("devhost/eventhubs/migrations"), schema="devhost_eventhubs")
    execution = _execution(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("a", "event.emit", 1), StepSeed("b", "event.emit", 1)])
    steps = [{"id": step, "action": "event.emit", "type": "t.x", "data": {}} for step in ("a", "b")]
    start = {"execution_id": str(execution.id), "tenant_id": str(tenant), "definition": {"steps": steps}}
    state, commands = machine.begin(start, datetime.now(UTC))
    (first,) = [c for c in commands if isinstance(c, machine.CallActivity)]
    carry = machine.carry(state, first.id)
    assert carry is not None
    batch = machine.DispatchSteps.model_validate({**first.input.model_dump(mode="json"), "carry": carry})

    recorder = _results_as_started(tenant, execution.id, ["a", "b"])
    answer = progress.dispatch_steps(batch)
    recorder.join(BOUND_S)
    assert answer.results == {"run:a:1": Verdict(ok=True, output={"step": "a"})}
    (carried,) = answer.then  # b, the last level: it recorded the run's success
    assert carried.answer.status is machine.Status.SUCCEEDED
    assert carried.answer.results == {"run:b:1": Verdict(ok=True, output={"step": "b"})}
    with tenant_transaction(tenant, pool=app_pool) as conn:
        done = repo.get_execution(conn, execution.id)
    assert (done.status, done.output) == ("succeeded", {"a": {"step": "a"}, "b": {"step": "b"}})
    # The orchestration takes b's level as the answer of the dispatch it asks for next, and completes.
    _, taken = machine.reduce(state, machine.ActivityDone(first.id, answer.model_dump(mode="json"), datetime.now(UTC)))
    assert [type(c).__name__ for c in taken if not isinstance(c, machine.WaitForEvent)] == ["Complete"]

    # Its answer lost in a crash, the dispatch runs again on the succeeded execution: the same levels and results
    # come back (not a refusal that would start them over), and nothing is recorded twice.
    again = progress.dispatch_steps(batch)
    assert again.results == answer.results and [c.answer.results for c in again.then] == [carried.answer.results]
    _, taken = machine.reduce(state, machine.ActivityDone(first.id, again.model_dump(mode="json"), datetime.now(UTC)))
    assert [type(c).__name__ for c in taken if not isinstance(c, machine.WaitForEvent)] == ["Complete"]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        events = [e.type for e in repo.events_after(conn, execution.id, 0, 100)]
    assert events.count("execution_completed") == 1 and events.count("step_started") == 2
