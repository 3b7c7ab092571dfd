# intent_ref: platform.execution
"""An expiry of remote leases (a lease poll's, the sweeper's) holds the executions of the items it ends in id order
before any of their attempts, and takes no attempt another transaction holds (ADR 0027): two expiries ending items
of two executions in opposite orders deadlocked (503 on the poll), and so did one meeting a recorder of an attempt."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import machine_types as mt
from shared.engine import progress, work_queue
from shared.engine import steps as store
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.test_executions import _execution
from tests.integration.test_outcome_lock_order import _Hold, _Threads

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


def _leased(pool: ConnectionPool[Any], tenant: uuid.UUID, keys: list[AttemptKey], action: str) -> None:
    """Each of `keys` begun, queued and leased (two steps, `s1` and `s2`, per execution)."""
    with tenant_transaction(tenant, pool=pool) as conn:
        for execution_id in dict.fromkeys(key.execution_id for key in keys):
            store.seed_steps(conn, execution_id, [StepSeed("s1", action, 3), StepSeed("s2", action, 3)])
        for key in keys:
            store.begin_attempt(conn, key, action=action, remote=True, step_state="waiting")
            work_queue.enqueue(conn, key, action=action, params={}, timeout_s=600)
        work_queue.lease(conn, tenant, actions=[action], max_items=len(keys), lease_s=600, worker="w")


def _expire(admin_url: str, keys: list[AttemptKey]) -> None:
    """The leases of `keys` ran out, in that order (their workers stopped heartbeating)."""
    with psycopg.connect(admin_url, dbname="quantum", autocommit=True) as admin:
        for age, key in enumerate(reversed(keys), start=1):
            admin.execute(
                "UPDATE app.work_items SET lease_expires_at = clock_timestamp() - make_interval(secs => %s)"
                " WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s",
                (10 * age, key.execution_id, key.step_id, key.phase, key.attempt),
            )


def _expiry(tenant: uuid.UUID, pool: ConnectionPool[Any]) -> Callable[[], list[AttemptKey]]:
    def expire() -> list[AttemptKey]:
        with tenant_transaction(tenant, pool=pool) as conn:
            return [attempt.key for attempt in work_queue.expire_leases(conn)]

    return expire


def _until_done_or_blocked(admin_url: str, thread: threading.Thread, holder: int, timeout_s: float = 10.0) -> None:
    """Wait (bounded) until `thread` has finished or a session waits for a lock `holder` holds."""
    with psycopg.connect(admin_url, dbname="quantum", autocommit=True) as admin:
        for _ in range(int(timeout_s / 0.02)):
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder,)
            ).fetchone()
            if not thread.is_alive() or (row is not None and row[0] >= 1):
                return
            time.sleep(0.02)


def test_two_expiries_ending_items_of_two_executions_in_opposite_orders_do_not_deadlock(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, action = new_tenant(), f"exp-{uuid.uuid4().hex[:6]}"
    first_id, second_id = (_execution(app_pool, tenant, path=["running"]).id for _ in range(2))
    a, b = AttemptKey(first_id, "s1", "run", 1), AttemptKey(second_id, "s1", "run", 1)
    c, d = AttemptKey(first_id, "s2", "run", 1), AttemptKey(second_id, "s2", "run", 1)
    _leased(app_pool, tenant, [a, b, c, d], action)
    _expire(pg.admin_url, [a, d])  # ended by the first expiry, in that order
    # The first has ended a (in expiry order it then held the first execution) and has d still to end.
    hold = _Hold(monkeypatch, "first", (store, "finish_attempt"))
    threads = _Threads()
    threads.start("first", _expiry(tenant, app_pool))
    assert hold.holding.wait(20) and hold.pid is not None
    _expire(pg.admin_url, [b, c])  # ran out since: the next expiry (another poll, the sweeper) ends b, then c
    second = threads.start("second", _expiry(tenant, app_pool))
    _until_done_or_blocked(pg.admin_url, second, hold.pid)
    hold.release.set()
    answers = threads.join()
    assert not [answer for answer in answers.values() if isinstance(answer, BaseException)], answers
    assert sorted(answers["first"], key=str) == sorted([a, d], key=str)
    assert sorted(answers["second"], key=str) == sorted([b, c], key=str)


def test_an_expiry_leaves_an_attempt_whose_result_is_being_recorded(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The orchestration times out s2 (the attempt's row held, its event to append) while both leases have run out:
    # the expiry ended s1 (holding the execution) and then waited for s2's attempt, which the timeout held while
    # waiting for the execution.
    tenant, action = new_tenant(), f"exp-{uuid.uuid4().hex[:6]}"
    execution_id = _execution(app_pool, tenant, path=["running"]).id
    s1, s2 = AttemptKey(execution_id, "s1", "run", 1), AttemptKey(execution_id, "s2", "run", 1)
    _leased(app_pool, tenant, [s1, s2], action)
    _expire(pg.admin_url, [s1, s2])
    timeout = mt.Outcome(step_id="s2", phase="run", attempt=1, ok=False, error="timed out", state="timed_out")
    batch = mt.RecordOutcomes(execution_id=str(execution_id), tenant_id=str(tenant), outcomes=[timeout])
    hold = _Hold(monkeypatch, "timeout", (store, "append_event"), before=True)
    threads = _Threads()
    threads.start("timeout", lambda: progress.record_outcomes(batch))
    assert hold.holding.wait(20) and hold.pid is not None
    expiry = threads.start("expiry", _expiry(tenant, app_pool))
    _until_done_or_blocked(pg.admin_url, expiry, hold.pid)
    hold.release.set()
    answers = threads.join()
    assert answers["expiry"] == [s1], answers  # s2's result is the timeout's, not the expiry's
    assert answers["timeout"] == [{"ok": False, "error": "timed out", "retryable": True, "state": "timed_out"}]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert work_queue.expire_leases(conn) == []  # s2's item closed with its attempt
