# intent_ref: platform.execution
"""record_outcomes for an attempt whose dispatch failed (the outcome names its action) takes the attempt's row before
the execution's, as every recorder of a result does (ADR 0014): it held the execution first and deadlocked with a
module worker's or a remote completion's result for that attempt, and the result that reached the attempt first was
the victim (lost, its work run again)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import machine_types as mt
from shared.engine import progress, remote, work_queue, worker
from shared.engine import steps as store
from shared.engine.protocol import WorkItem
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.test_approval_races import _until_blocked
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

NOT_STARTED = "could not start: boom"
FAILED = {"ok": False, "error": NOT_STARTED, "retryable": True, "state": "failed"}


class _Hold:
    """Holds the thread named `thread` once, at the first of `targets` (module, function name) it calls (before the
    real call with `before`, else after it), until released; `pid` is that thread's backend, which the other side
    then waits for."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, thread: str, *targets: tuple[Any, str], before: bool = False
    ) -> None:
        self.holding, self.release = threading.Event(), threading.Event()
        self.pid: int | None = None
        self._thread, self._before = thread, before
        for module, name in targets:
            monkeypatch.setattr(module, name, self._held(getattr(module, name)))

    def _held(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def held(conn: Any, *args: Any, **kwargs: Any) -> Any:
            if self._before:
                self._hold(conn)
            answer = real(conn, *args, **kwargs)
            if not self._before:
                self._hold(conn)
            return answer

        return held

    def _hold(self, conn: Any) -> None:
        if threading.current_thread().name == self._thread and not self.holding.is_set():
            self.pid = conn.info.backend_pid
            self.holding.set()
            self.release.wait(20)


class _Threads:
    """Calls run on named threads; each one's answer (or exception) kept by name."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, call: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            try:
                self.answers[name] = call()
            except BaseException as exc:  # handed to the test, which asserts what it expects
                self.answers[name] = exc

        thread = threading.Thread(name=name, target=run)
        self._threads.append(thread)
        thread.start()
        return thread

    def join(self) -> dict[str, Any]:
        for thread in self._threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self._threads)
        return self.answers


def _race_held(
    pg: Any, hold: _Hold, first: tuple[str, Callable[[], Any]], second: tuple[str, Callable[[], Any]]
) -> dict[str, Any]:
    """Runs `first` (its thread named as `hold`'s) until `hold` holds it, then `second` until it waits for a lock the
    first holds, then lets both finish: what each answered or raised, by name."""
    threads = _Threads()
    threads.start(*first)
    assert hold.holding.wait(20) and hold.pid is not None
    threads.start(*second)
    _until_blocked(pg.admin_url, hold.pid, 1)
    hold.release.set()
    return threads.join()


def _failed_dispatch(key: AttemptKey, tenant: uuid.UUID, action: str) -> mt.RecordOutcomes:
    """What the reducer asks when the dispatch of `key` failed for good (it may have committed its start)."""
    outcome = mt.Outcome(
        step_id=key.step_id,
        phase="run",
        attempt=key.attempt,
        ok=False,
        state="failed",
        error=NOT_STARTED,
        action=action,
    )
    return mt.RecordOutcomes(execution_id=str(key.execution_id), tenant_id=str(tenant), outcomes=[outcome])


def _started(pool: ConnectionPool[Any], tenant: uuid.UUID, *, begun: bool = True) -> tuple[AttemptKey, WorkItem]:
    """A built-in attempt of step `work`, begun (its dispatch committed it before failing) unless not `begun`."""
    execution = _execution(pool, tenant, path=["running"])
    key = AttemptKey(execution.id, "work", "run", 1)
    with tenant_transaction(tenant, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("work", "http.request", 1)])
        if begun:
            store.begin_attempt(conn, key, action="http.request", remote=False)
    item = WorkItem(
        tenant_id=str(tenant),
        execution_id=str(execution.id),
        step_id="work",
        phase="run",
        attempt=1,
        action="http.request",
        params={},
        timeout_s=60,
        remote=False,
    )
    return key, item


def _leased(pool: ConnectionPool[Any], tenant: uuid.UUID) -> tuple[AttemptKey, work_queue.Lease]:
    """Step `build`'s remote attempt, queued (its dispatch committed the start and the item) and leased by a worker."""
    action = f"rc-{uuid.uuid4().hex[:6]}"
    key = _queued(pool, tenant, action, path=["running"])
    with tenant_transaction(tenant, pool=pool) as conn:
        (lease,) = work_queue.lease(conn, tenant, actions=[action], max_items=1, lease_s=60, worker="w").leases
    return key, lease


def _recorded(pool: ConnectionPool[Any], tenant: uuid.UUID, key: AttemptKey) -> store.Attempt:
    with tenant_transaction(tenant, pool=pool) as conn:
        attempt = store.get_attempt(conn, key)
    assert attempt is not None
    return attempt


def test_a_module_workers_result_holding_the_attempt_wins_over_a_failed_dispatchs_outcome(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = new_tenant()
    key, item = _started(app_pool, tenant)
    # The worker has recorded its result in the attempt's row (held) and is about to append its event (the
    # execution's row) when the outcome of the failed dispatch comes.
    hold = _Hold(monkeypatch, "worker", (store, "append_event"), before=True)
    answers = _race_held(
        pg,
        hold,
        ("worker", lambda: worker._record(item, key, {"ok": True, "output": {"n": 1}})),
        ("outcomes", lambda: progress.record_outcomes(_failed_dispatch(key, tenant, "http.request"))),
    )
    assert not isinstance(answers["worker"], BaseException), answers  # DeadlockDetected before the fix
    assert answers["outcomes"] == [{"ok": True, "output": {"n": 1}}]  # the result recorded first stands
    assert _recorded(app_pool, tenant, key).state == "succeeded"


def test_a_remote_completion_holding_the_attempt_wins_over_a_failed_dispatchs_outcome(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = new_tenant()
    key, lease = _leased(app_pool, tenant)
    # The completion holds the item and the attempt (result written) and is about to append its event.
    hold = _Hold(monkeypatch, "complete", (store, "append_event"), before=True)
    result = remote.RemoteResult(ok=True, output={"built": True})
    answers = _race_held(
        pg,
        hold,
        ("complete", lambda: remote.record(lease.task_token, key.execution_id, "build", "run", result)),
        ("outcomes", lambda: progress.record_outcomes(_failed_dispatch(key, tenant, lease.item.action))),
    )
    assert answers["complete"] == remote.Recorded(key, {"ok": True, "output": {"built": True}}), answers
    assert answers["outcomes"] == [{"ok": True, "output": {"built": True}}]


def test_a_failed_dispatchs_outcome_holding_the_attempt_first_answers_a_completion_409_not_a_deadlock(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reviewer's order: the outcome takes its first lock, then the completion comes. It held the execution
    # first, the completion then held the item and the attempt and waited for it: the completion was the victim
    # (503) of the outcome's wait for the attempt.
    tenant = new_tenant()
    key, lease = _leased(app_pool, tenant)
    # Held after whichever lock it takes first.
    hold = _Hold(monkeypatch, "outcomes", (repo, "hold_execution"), (store, "hold_attempt"))
    result = remote.RemoteResult(ok=True, output={"built": True})
    answers = _race_held(
        pg,
        hold,
        ("outcomes", lambda: progress.record_outcomes(_failed_dispatch(key, tenant, lease.item.action))),
        ("complete", lambda: remote.record(lease.task_token, key.execution_id, "build", "run", result)),
    )
    assert answers["outcomes"] == [FAILED], answers
    assert isinstance(answers["complete"], remote.TokenUsedError), answers  # 409: the attempt has ended
    assert _recorded(app_pool, tenant, key).state == "failed"


def test_a_start_its_dispatch_commits_meanwhile_is_finished_after_the_result_that_holds_it(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dispatch in doubt is still open when the outcome comes: the outcome finds no attempt, waits for the
    # execution, and then finds the attempt the dispatch committed, which the worker has meanwhile taken for its
    # result and holds while it waits for the execution. Finishing it there deadlocked (the worker the victim).
    tenant = new_tenant()
    key, item = _started(app_pool, tenant, begun=False)
    dispatching, committed = threading.Event(), threading.Event()
    dispatch_pid: list[int] = []

    def dispatch() -> None:
        with tenant_transaction(tenant, pool=app_pool) as conn:
            repo.hold_execution(conn, key.execution_id)
            store.begin_attempt(conn, key, action="http.request", remote=False)
            dispatch_pid.append(conn.info.backend_pid)
            dispatching.set()
            committed.wait(20)

    hold = _Hold(monkeypatch, "outcomes", (repo, "hold_execution"))  # after it returns: the execution is held
    threads = _Threads()
    threads.start("dispatch", dispatch)
    assert dispatching.wait(20)
    threads.start("outcomes", lambda: progress.record_outcomes(_failed_dispatch(key, tenant, "http.request")))
    _until_blocked(pg.admin_url, dispatch_pid[0], 1)  # the outcome waits for the dispatch's execution lock
    committed.set()
    assert hold.holding.wait(20) and hold.pid is not None
    threads.start("worker", lambda: worker._record(item, key, {"ok": True, "output": {"n": 2}}))
    _until_blocked(pg.admin_url, hold.pid, 1)  # the worker holds the attempt and waits for the execution
    hold.release.set()
    answers = threads.join()
    assert not isinstance(answers["worker"], BaseException), answers
    assert answers["outcomes"] == [{"ok": True, "output": {"n": 2}}]
    assert _recorded(app_pool, tenant, key).state == "succeeded"
