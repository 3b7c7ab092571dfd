# intent_ref: platform.execution
"""Every writer of an execution's rows takes them in one order (ADR 0014): its open attempts, then the execution.

The recorders of a result (the module worker, a timeout, a decision, a remote completion, a heartbeat's abandon) always
took the attempt first; the sweeper's end, a cancel ending queued work, a lease ending a stale item and a dispatch's
abandoned note took the execution first, and each pair meeting was a deadlock (Postgres ended one as its victim). Each
pair runs here in both orders of arrival, one side held open at its first lock until the other waits for it (or is
done), several times, with no retry wrapper: no side may meet DeadlockDetected."""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, progress, remote, sweeper, work_queue, worker
from shared.engine import executions as repo
from shared.engine import machine_types as mt
from shared.engine import steps as store
from shared.engine.steps import AttemptKey
from tests.integration.test_approval_approvers import _asked
from tests.integration.test_approval_races import _until_blocked
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_expiry_lock_order import _until_done_or_blocked
from tests.integration.test_outcome_lock_order import _Hold, _leased, _started, _Threads

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

ROUNDS = 3
RECORDER, ENDER = "recorder", "ender"
# A recorder holds the attempt and is about to append its event (the execution's row); the decision reads the
# execution after holding the attempt.
RECORDER_PAUSE = ((store, "append_event"),)
DECISION_PAUSE = ((repo, "get_execution"),)
# An abandon holds the attempt and is about to append its step's step_cancelled (its attempt writes no event).
ABANDON_PAUSE = ((repo, "append_event"),)


@dataclass(frozen=True)
class Pair:
    """A recorder and an ender of one attempt, with where each is held, and the attempt's state when each wins."""

    recorder: Callable[[], Any]
    ender: Callable[[], Any]
    recorder_pause: tuple[tuple[Any, str], ...]
    recorder_before: bool
    ender_pause: tuple[tuple[Any, str], ...]
    ender_before: bool
    key: AttemptKey
    recorder_wins: str
    expected_refusals: tuple[type[BaseException], ...] = ()


@pytest.fixture
def tenant(new_tenant: Callable[[], uuid.UUID]) -> Iterator[uuid.UUID]:
    yield new_tenant()


def _timeout(tenant: uuid.UUID, key: AttemptKey) -> Callable[[], Any]:
    outcome = mt.Outcome(step_id=key.step_id, phase="run", attempt=key.attempt, ok=False, error="t", state="timed_out")
    batch = mt.RecordOutcomes(execution_id=str(key.execution_id), tenant_id=str(tenant), outcomes=[outcome])
    return lambda: progress.record_outcomes(batch)


def _decision(tenant: uuid.UUID, pool: ConnectionPool[Any], execution_id: uuid.UUID) -> Callable[[], Any]:
    def decide() -> Any:
        with tenant_transaction(tenant, pool=pool) as conn:
            return control.decide_approval(
                conn, execution_id, "gate", "approve", principal_id="tid/a", object_id="a", comment=""
            )

    return decide


def _end(tenant: uuid.UUID, pool: ConnectionPool[Any], execution_id: uuid.UUID) -> Callable[[], Any]:
    return lambda: sweeper.end_execution(tenant, execution_id, "orchestration gone", pool=pool)


def _cancel(tenant: uuid.UUID, pool: ConnectionPool[Any], execution_id: uuid.UUID) -> Callable[[], Any]:
    """The cancel route's transaction: the request, then the queued work ended."""

    def cancel() -> Any:
        with tenant_transaction(tenant, pool=pool) as conn:
            control.request_cancel(conn, execution_id, "alice")
            return work_queue.cancel_queued(conn, execution_id)

    return cancel


def _abandon_note(tenant: uuid.UUID, execution_id: uuid.UUID) -> Callable[[], Any]:
    """A stopping run's dispatch, whose note abandons the approval `gate`."""
    note = mt.StepNote(kind="abandoned", step_id="gate", attempt=1, error="cancelled")
    batch = mt.DispatchSteps(execution_id=str(execution_id), tenant_id=str(tenant), notes=[note])
    return lambda: progress.dispatch_steps(batch)


END_PAUSE = ((store, "list_steps"),)  # after the end's first locks
NOTE_PAUSE = ((progress, "_note"),)  # before the dispatch's note, its locks taken


def _end_vs_module_result(pool: ConnectionPool[Any], tenant: uuid.UUID) -> Pair:
    key, item = _started(pool, tenant)
    result = {"ok": True, "output": {"n": 1}}
    return Pair(
        lambda: worker._record(item, key, result),
        _end(tenant, pool, key.execution_id),
        RECORDER_PAUSE,
        True,
        END_PAUSE,
        False,
        key,
        "succeeded",
    )


def _end_vs_timeout(pool: ConnectionPool[Any], tenant: uuid.UUID) -> Pair:
    key, _ = _started(pool, tenant)
    recorder = _timeout(tenant, key)
    return Pair(
        recorder, _end(tenant, pool, key.execution_id), RECORDER_PAUSE, True, END_PAUSE, False, key, "timed_out"
    )


def _end_vs_decision(pool: ConnectionPool[Any], tenant: uuid.UUID) -> Pair:
    execution_id = _asked(pool, tenant, {"message": "ship?"})
    key = AttemptKey(execution_id, "gate", "run", 1)
    return Pair(
        _decision(tenant, pool, execution_id),
        _end(tenant, pool, execution_id),
        DECISION_PAUSE,
        False,
        END_PAUSE,
        False,
        key,
        "succeeded",
        (control.NotWaitingError,),
    )


def _end_vs_completion(pool: ConnectionPool[Any], tenant: uuid.UUID) -> Pair:
    key, lease = _leased(pool, tenant)
    result = remote.RemoteResult(ok=True, output={"built": True})
    return Pair(
        lambda: remote.record(lease.task_token, key.execution_id, "build", "run", result),
        _end(tenant, pool, key.execution_id),
        RECORDER_PAUSE,
        True,
        END_PAUSE,
        False,
        key,
        "succeeded",
        (remote.LeaseExpiredError,),
    )


def _end_vs_heartbeat(pool: ConnectionPool[Any], tenant: uuid.UUID) -> Pair:
    key, lease = _leased(pool, tenant)
    with tenant_transaction(tenant, pool=pool) as conn:
        control.request_cancel(conn, key.execution_id, "alice")  # the heartbeat ends the attempt (the cancel's way)
    lease_id = lease.item.lease_id
    assert lease_id is not None

    def beat() -> Any:
        with tenant_transaction(tenant, pool=pool) as conn:
            return work_queue.heartbeat(conn, lease.item.id, lease_id, extend_s=60, progress=None)

    return Pair(
        beat,
        _end(tenant, pool, key.execution_id),
        ABANDON_PAUSE,
        True,
        END_PAUSE,
        False,
        key,
        "abandoned",
        (work_queue.LeaseNotHeldError,),
    )


def _cancel_vs_timeout(pool: ConnectionPool[Any], tenant: uuid.UUID) -> Pair:
    key = _queued(pool, tenant, f"ol-{uuid.uuid4().hex[:6]}", path=["running"])
    return Pair(
        _timeout(tenant, key),
        _cancel(tenant, pool, key.execution_id),
        RECORDER_PAUSE,
        True,
        ((work_queue, "cancel_queued"),),  # the request recorded, the queued work still to end
        True,
        key,
        "timed_out",
    )


def _stale_lease_vs_timeout(pool: ConnectionPool[Any], tenant: uuid.UUID) -> Pair:
    action = f"ol-{uuid.uuid4().hex[:6]}"
    key = _queued(pool, tenant, action, path=["running"])
    with tenant_transaction(tenant, pool=pool) as conn:
        control.request_cancel(conn, key.execution_id, "alice")  # without its cancel_queued: the lease ends the item

    def lease() -> Any:
        with tenant_transaction(tenant, pool=pool) as conn:
            return work_queue.lease(conn, tenant, actions=[action], max_items=5, lease_s=60, worker="w")

    # Held before the stale item's abandon: its locks taken.
    return Pair(
        _timeout(tenant, key), lease, RECORDER_PAUSE, True, ((progress, "abandon_step"),), True, key, "timed_out"
    )


def _note_vs_decision(pool: ConnectionPool[Any], tenant: uuid.UUID) -> Pair:
    execution_id = _asked(pool, tenant, {"message": "ship?"})
    key = AttemptKey(execution_id, "gate", "run", 1)
    return Pair(
        _decision(tenant, pool, execution_id),
        _abandon_note(tenant, execution_id),
        DECISION_PAUSE,
        False,
        NOTE_PAUSE,
        True,
        key,
        "succeeded",
        (control.NotWaitingError,),
    )


def _note_vs_timeout(pool: ConnectionPool[Any], tenant: uuid.UUID) -> Pair:
    execution_id = _asked(pool, tenant, {"message": "ship?"})
    key = AttemptKey(execution_id, "gate", "run", 1)
    return Pair(
        _timeout(tenant, key),
        _abandon_note(tenant, execution_id),
        RECORDER_PAUSE,
        True,
        NOTE_PAUSE,
        True,
        key,
        "timed_out",
    )


PAIRS = {
    "sweepers-end/module-result": _end_vs_module_result,
    "sweepers-end/timeout": _end_vs_timeout,
    "sweepers-end/decision": _end_vs_decision,
    "sweepers-end/remote-completion": _end_vs_completion,
    "sweepers-end/heartbeat-abandon": _end_vs_heartbeat,
    "cancel/timeout": _cancel_vs_timeout,
    "stale-lease/timeout": _stale_lease_vs_timeout,
    "abandoned-note/decision": _note_vs_decision,
    "abandoned-note/timeout": _note_vs_timeout,
}


def _state(pool: ConnectionPool[Any], tenant: uuid.UUID, key: AttemptKey) -> str:
    with tenant_transaction(tenant, pool=pool) as conn:
        attempt = store.get_attempt(conn, key)
    assert attempt is not None
    return attempt.state


def _meet(pg: Any, pair: Pair, first: str) -> dict[str, Any]:
    """Run the `first` side until it holds its first lock(s), then the other until it waits for it (or is done), then
    let both finish; answers what each returned or raised."""
    calls = {RECORDER: pair.recorder, ENDER: pair.ender}
    pause = {RECORDER: (pair.recorder_pause, pair.recorder_before), ENDER: (pair.ender_pause, pair.ender_before)}
    second = ENDER if first == RECORDER else RECORDER
    targets, before = pause[first]
    with pytest.MonkeyPatch.context() as patch:
        hold = _Hold(patch, first, *targets, before=before)
        threads = _Threads()
        threads.start(first, calls[first])
        assert hold.holding.wait(20) and hold.pid is not None
        waiting = threads.start(second, calls[second])
        _until_done_or_blocked(pg.admin_url, waiting, hold.pid)
        hold.release.set()
        return threads.join()


@pytest.mark.parametrize("first", [RECORDER, ENDER])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_writers_meeting_on_an_executions_rows_never_deadlock(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID, name: str, first: str
) -> None:
    for _ in range(ROUNDS):
        pair = PAIRS[name](app_pool, tenant)
        answers = _meet(pg, pair, first)
        deadlocks = [answer for answer in answers.values() if isinstance(answer, psycopg.errors.DeadlockDetected)]
        assert not deadlocks, answers
        refused = [
            answer
            for answer in answers.values()
            if isinstance(answer, BaseException) and not isinstance(answer, pair.expected_refusals)
        ]
        assert not refused, answers
        # Whoever held the attempt first decided it; the other found it decided.
        state = _state(app_pool, tenant, pair.key)
        assert state == (pair.recorder_wins if first == RECORDER else "abandoned"), (answers, state)


def _together(first: Callable[[], Any], second: Callable[[], Any]) -> dict[str, Any]:
    """Both released at once (a barrier), each on its own thread; what each answered or raised."""
    barrier = threading.Barrier(2)
    threads = _Threads()
    threads.start(RECORDER, lambda: (barrier.wait(10), first())[1])
    threads.start(ENDER, lambda: (barrier.wait(10), second())[1])
    return threads.join()


def test_a_sweepers_end_and_a_module_result_started_together_never_deadlock(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    # Without a hold: both released at once, many times, in whatever order they reach the rows.
    for _ in range(15):
        key, item = _started(app_pool, tenant)
        result = {"ok": True, "output": {}}
        answers = _together(
            functools.partial(worker._record, item, key, result), _end(tenant, app_pool, key.execution_id)
        )
        assert not [answer for answer in answers.values() if isinstance(answer, BaseException)], answers
        assert _state(app_pool, tenant, key) in ("succeeded", "abandoned")


def test_an_attempt_a_dispatch_commits_while_the_end_waits_is_taken_without_a_reverse_wait(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    # The end read the open attempts (none) while a dispatch held the execution and began one; the dispatch commits,
    # the end takes the execution, and the module worker's result takes the new attempt and waits for the execution.
    # The end waited for that attempt under the execution's lock: a deadlock. It now lets go and takes it first.
    key, item = _started(app_pool, tenant, begun=False)
    dispatching, commit = threading.Event(), threading.Event()
    dispatch_pid: list[int] = []

    def dispatch() -> None:
        with tenant_transaction(tenant, pool=app_pool) as conn:
            repo.hold_execution(conn, key.execution_id)
            store.begin_attempt(conn, key, action="http.request", remote=False)
            dispatch_pid.append(conn.info.backend_pid)
            dispatching.set()
            assert commit.wait(20)

    with pytest.MonkeyPatch.context() as patch:
        # Held once the end has the execution (whichever module's name it calls it by).
        names = [(module, "hold_execution") for module in (store, repo) if hasattr(module, "hold_execution")]
        hold = _Hold(patch, ENDER, *names)
        threads = _Threads()
        threads.start("dispatch", dispatch)
        assert dispatching.wait(20)
        threads.start(ENDER, _end(tenant, app_pool, key.execution_id))
        _until_blocked(pg.admin_url, dispatch_pid[0], 1)  # the end waits for the dispatch's execution lock
        commit.set()
        assert hold.holding.wait(20) and hold.pid is not None
        recorder = threads.start(RECORDER, functools.partial(worker._record, item, key, {"ok": True, "output": {}}))
        _until_done_or_blocked(pg.admin_url, recorder, hold.pid)  # holds the attempt, waits for the execution
        hold.release.set()
        answers = threads.join()
    assert not [answer for answer in answers.values() if isinstance(answer, BaseException)], answers
    assert answers[ENDER] is not None  # the end ended it
    assert _state(app_pool, tenant, key) == "succeeded"  # the result that held the attempt first stands
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert repo.get_execution(conn, key.execution_id).status == "failed"
