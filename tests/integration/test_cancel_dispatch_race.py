# intent_ref: platform.execution
"""A cancel and a dispatch of the same execution serialize on its row, and the lease never hands out work that a
cancel or an end missed (ADR 0027, amendment 2026-12-05)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, progress, sweeper, work_queue
from shared.engine import executions as repo
from shared.engine import machine_types as mt
from shared.engine import steps as store
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


def _blocked_or_done(pool: ConnectionPool[Any], tenant_id: uuid.UUID, pid: list[int], done: threading.Event) -> bool:
    """Wait until the other transaction has finished or waits on a lock; True when it waits."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if done.is_set():
            return False
        if pid:
            with tenant_transaction(tenant_id, pool=pool) as conn:
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted) AS waiting", (pid[0],)
                ).fetchone()
            if row is not None and row["waiting"]:
                return True
        time.sleep(0.02)
    raise AssertionError("the cancel neither finished nor waited on a lock")


def test_a_cancel_racing_a_dispatch_ends_the_item_the_dispatch_queued(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = new_tenant()
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", "build-container", 3)])
    pid: list[int] = []
    done = threading.Event()
    dequeued: list[store.Attempt] = []
    waited: list[bool] = []

    def cancel() -> None:  # what POST .../cancel records
        try:
            with tenant_transaction(tenant) as conn:
                pid.append(conn.info.backend_pid)
                control.request_cancel(conn, execution.id, "alice")
                dequeued.extend(work_queue.cancel_queued(conn, execution.id))
        finally:
            done.set()

    original = store.begin_attempt
    canceller = threading.Thread(target=cancel)

    def begin_attempt(*args: Any, **kwargs: Any) -> Any:
        # The dispatch has decided to start the run and has written nothing yet (its first event append locks the
        # execution's row): the window the cancel raced into.
        canceller.start()
        waited.append(_blocked_or_done(app_pool, tenant, pid, done))
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "begin_attempt", begin_attempt)
    start = mt.StepStart(
        step_id="build",
        phase="run",
        attempt=1,
        kind="module",
        action="build-container",
        params={"image": "x"},
        remote=True,
        timeout_s=600,
    )
    batch = mt.DispatchSteps(execution_id=str(execution.id), tenant_id=str(tenant), starts=[start], status="waiting")
    answer = progress.dispatch_steps(batch)
    canceller.join(10)
    monkeypatch.setattr(store, "begin_attempt", original)

    assert waited == [True], "the cancel committed inside the dispatch's transaction"
    assert not answer.refused
    key = AttemptKey(execution.id, "build", "run", 1)
    assert [(attempt.key, attempt.state) for attempt in dequeued] == [(key, "abandoned")]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert repo.get_execution(conn, execution.id).cancel_requested_at is not None
        assert (
            work_queue.lease(conn, tenant, actions=["build-container"], max_items=5, lease_s=60, worker="w").leases
            == []
        )


def test_a_retry_refused_for_an_unseen_cancel_ends_the_steps_retry_pause(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # The reducer drops a refused start as never started; the step's row stayed `retrying` (retry_at in the past)
    # in an execution that then ended cancelled, with no step_cancelled in its stream.
    tenant = new_tenant()
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("flaky", "event.emit", 3), StepSeed("later", "event.emit", 1)])
        conn.execute(
            "UPDATE app.execution_steps SET state = 'retrying', attempt = 1 WHERE execution_id = %s"
            " AND step_id = 'flaky'",
            (execution.id,),
        )
        control.request_cancel(conn, execution.id, "alice")
    starts = [
        mt.StepStart(step_id=step, phase="run", attempt=attempt, kind="module", action="event.emit", params={})
        for step, attempt in (("flaky", 2), ("later", 1))
    ]
    batch = mt.DispatchSteps(execution_id=str(execution.id), tenant_id=str(tenant), starts=starts)
    assert progress.dispatch_steps(batch).refused
    with tenant_transaction(tenant, pool=app_pool) as conn:
        steps = {step["step_id"]: step["state"] for step in store.list_steps(conn, execution.id)}
        events = [(event.type, event.step_id) for event in repo.events_after(conn, execution.id, 0, 100)]
    assert steps == {"flaky": "cancelled", "later": "pending"}
    assert events[-1] == ("step_cancelled", "flaky")


def _queued(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, action: str, *, path: list[repo.Status], phase: str = "run"
) -> AttemptKey:
    execution = _execution(pool, tenant_id, path=path)
    key = AttemptKey(execution.id, "build", phase, 1)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", action, 3)])
        store.begin_attempt(conn, key, action=action, remote=True, step_state="waiting" if phase == "run" else None)
        work_queue.enqueue(conn, key, action=action, params={}, timeout_s=600)
    return key


def _lease(pool: ConnectionPool[Any], tenant_id: uuid.UUID, action: str) -> list[AttemptKey]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        leases = work_queue.lease(conn, tenant_id, actions=[action], max_items=10, lease_s=60, worker="w").leases
    return [lease.item.key for lease in leases]


def _cancel_only(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> None:
    """A cancel recorded without its cancel_queued: the item was not there for it to see."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        control.request_cancel(conn, execution_id, "alice")


def test_a_lease_ends_run_work_of_a_cancelled_execution_instead_of_handing_it_out(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, action = new_tenant(), f"race-{uuid.uuid4().hex[:6]}"
    missed = _queued(app_pool, tenant, action, path=["running"])
    other = _queued(app_pool, tenant, action, path=["running"])
    _cancel_only(app_pool, tenant, missed.execution_id)

    assert _lease(app_pool, tenant, action) == [other]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        attempt = store.get_attempt(conn, missed)
        steps = {step["step_id"]: step["state"] for step in store.list_steps(conn, missed.execution_id)}
        events = [event.type for event in repo.events_after(conn, missed.execution_id, 0, 100)]
    assert attempt is not None and (attempt.state, attempt.error) == ("abandoned", work_queue.CANCELLED_QUEUED)
    assert steps == {"build": "cancelled"} and events[-1] == "step_cancelled"
    assert _lease(app_pool, tenant, action) == []


def test_a_lease_ends_quietly_the_work_of_an_ended_execution(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, action = new_tenant(), f"ended-{uuid.uuid4().hex[:6]}"
    run = _queued(app_pool, tenant, action, path=["running"])
    rollback = _queued(app_pool, tenant, action, path=["running", "compensating"], phase="compensate")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        for key in (run, rollback):
            repo.transition(conn, key.execution_id, "failed", error="ended elsewhere")

    assert _lease(app_pool, tenant, action) == []
    with tenant_transaction(tenant, pool=app_pool) as conn:
        for key, step_state in ((run, "cancelled"), (rollback, "compensation_failed")):
            attempt = store.get_attempt(conn, key)
            assert attempt is not None and (attempt.state, attempt.error) == ("abandoned", work_queue.ENDED_QUEUED)
            assert [step["state"] for step in store.list_steps(conn, key.execution_id)] == [step_state]
            # Nothing after the end: it stays the last event of the stream.
            assert repo.events_after(conn, key.execution_id, 0, 100)[-1].type == "execution_failed"


def test_a_cancelled_executions_compensation_is_still_leased(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, action = new_tenant(), f"undo-{uuid.uuid4().hex[:6]}"
    # The cancel first, then the compensation it causes (a cancel of a failure's compensation is refused).
    execution = _execution(app_pool, tenant, path=["running"])
    _cancel_only(app_pool, tenant, execution.id)
    rollback = AttemptKey(execution.id, "build", "compensate", 1)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        repo.transition(conn, execution.id, "compensating", error="cancelled")
        store.seed_steps(conn, execution.id, [StepSeed("build", action, 3)])
        store.begin_attempt(conn, rollback, action=action, remote=True)
        work_queue.enqueue(conn, rollback, action=action, params={}, timeout_s=600)
    assert _lease(app_pool, tenant, action) == [rollback]  # a cancel compensates: its rollbacks must run


def test_a_cancel_that_read_its_execution_before_it_ended_records_nothing_after_the_end(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancel read the status without a lock, then recorded its request: an execution that ended in between got
    # a cancel request, and its stream a `cancel_requested` event after its end.
    tenant_id = new_tenant()
    execution = _execution(app_pool, tenant_id, path=["running"])
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        repo.transition(conn, execution.id, "succeeded")
    reads = iter([execution])  # the first read is the one from before the end
    real = repo.get_execution
    monkeypatch.setattr(control.repo, "get_execution", lambda conn, eid: next(reads, None) or real(conn, eid))
    with tenant_transaction(tenant_id, pool=app_pool) as conn, pytest.raises(control.AlreadyFinishedError):
        control.request_cancel(conn, execution.id, "someone")
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        after = real(conn, execution.id)
        kinds = [e.type for e in repo.events_after(conn, execution.id, 0)]
    assert after.cancel_requested_at is None and kinds[-1] == "execution_completed"


def test_a_lease_ending_stale_work_takes_the_execution_first_as_the_sweepers_end_does(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweeper's end locks the execution, then the attempts; the lease ending a stale item locked the attempt,
    # then the execution (its step_cancelled event): run together, Postgres aborted one of them as a deadlock.
    tenant = new_tenant()
    action = f"test.remote.{uuid.uuid4().hex[:8]}"
    key = _queued(app_pool, tenant, action, path=["running"])
    _cancel_only(app_pool, tenant, key.execution_id)  # the item is left queued: the cancel missed it
    holding = threading.Event()
    real_list_steps = store.list_steps

    def list_steps_while_the_lease_runs(conn: Any, execution_id: uuid.UUID) -> Any:
        holding.set()  # the sweeper holds the execution's row now
        time.sleep(0.5)  # the lease runs meanwhile (it waits on that row, or deadlocks without the fix)
        return real_list_steps(conn, execution_id)

    monkeypatch.setattr(sweeper.store, "list_steps", list_steps_while_the_lease_runs)
    outcomes: dict[str, Any] = {}

    def end() -> None:
        try:
            outcomes["sweeper"] = sweeper.end_execution(tenant, key.execution_id, "terminated", pool=app_pool)
        except Exception as exc:  # the test reports what either side met
            outcomes["sweeper"] = exc

    def lease() -> None:
        assert holding.wait(10)
        try:
            outcomes["lease"] = _lease(app_pool, tenant, action)
        except Exception as exc:
            outcomes["lease"] = exc

    threads = [threading.Thread(target=end), threading.Thread(target=lease)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(isinstance(outcome, Exception) for outcome in outcomes.values()), outcomes
    assert outcomes["lease"] == []


def test_a_sweepers_end_of_a_parent_and_a_lease_of_its_childs_work_do_not_deadlock(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The end holds the parent, then the child's queued items (its cancel passed down); a lease poll that locked
    # the child's item holds the cancel-requested parent to end the parent's stale item: each waited for the other.
    tenant, action = new_tenant(), f"tree-{uuid.uuid4().hex[:6]}"
    parent = _queued(app_pool, tenant, action, path=["running"])
    child = _queued(app_pool, tenant, action, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, parent.execution_id, [StepSeed("sub", "intent.run", 1)])
        store.begin_attempt(conn, AttemptKey(parent.execution_id, "sub", "run", 1), action="intent.run", remote=False)
        store.set_child(conn, parent.execution_id, "sub", child.execution_id)
        control.request_cancel(conn, parent.execution_id, "alice")  # seen by the lease: the parent's item is stale
    lease_thread, ended, failures = threading.current_thread(), threading.Event(), []
    locked = threading.Event()
    held = store.hold_attempts

    def hold_after_the_end_began(conn: Any, keys: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is lease_thread and not locked.is_set():
            locked.set()  # the poll has locked its items, the child's included
            ended.wait(3)  # the end runs meanwhile (or waits on a lock the poll holds)
        return held(conn, keys, **kwargs)

    def end() -> None:
        try:
            assert locked.wait(30)
            sweeper.end_execution(tenant, parent.execution_id, "orchestration gone", pool=app_pool)
        except Exception as exc:
            failures.append(exc)
        finally:
            ended.set()

    # Before the stale items' attempts and executions are taken (ADR 0014's one order).
    monkeypatch.setattr(work_queue.store, "hold_attempts", hold_after_the_end_began)
    ending = threading.Thread(target=end)
    ending.start()
    with tenant_transaction(tenant, pool=app_pool) as conn:
        work_queue.lease(conn, tenant, actions=[action], max_items=10, lease_s=60, worker="w")
    ending.join(30)
    assert failures == []
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert repo.get_execution(conn, parent.execution_id).status == "failed"
        assert repo.get_execution(conn, child.execution_id).cancel_requested_at is not None
