# intent_ref: platform.execution
"""Decisions racing on one waiting approval: one applies and writes its event, the others are answered as later."""

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
from shared.engine import control
from shared.engine import executions as repo
from shared.engine import steps as store
from tests.integration.test_approval_approvers import _asked

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

DECIDERS = 8
DECISION_EVENTS = ("approval_granted", "approval_rejected")


def _decide(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID, decision: str) -> str:
    """One decision in its own tenant transaction, as the route makes it: `applied`, `repeated` or `not-waiting`."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        try:
            outcome = control.decide_approval(
                conn,
                execution_id,
                "gate",
                decision,  # type: ignore[arg-type]  # "approve" or "reject"
                principal_id=f"tid/approver-{decision}",
                object_id=f"approver-{decision}",
                comment="",
            )
        except control.NotWaitingError:
            return "not-waiting"
    return "applied" if outcome.applied else "repeated"


def _until_blocked(admin_url: str, holder: int, count: int, timeout_s: float = 10.0) -> None:
    """Wait (bounded) until `count` sessions wait for a lock `holder` holds."""
    with psycopg.connect(admin_url, dbname="quantum", autocommit=True) as admin:
        for _ in range(int(timeout_s / 0.02)):
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder,)
            ).fetchone()
            if row is not None and row[0] >= count:
                return
            time.sleep(0.02)


def test_racing_decisions_apply_one_and_write_one_event(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    decisions = ["approve" if n % 2 == 0 else "reject" for n in range(DECIDERS)]
    answers: list[tuple[str, str]] = []
    failures: list[BaseException] = []

    def decide(decision: str) -> None:
        try:
            answers.append((decision, _decide(app_pool, tenant, execution_id, decision)))
        except BaseException as exc:  # reported below: an exception in a thread would otherwise pass unseen
            failures.append(exc)

    # Every decider starts while the execution's row is held, so all of them get as far as they can before one
    # decides: the race at its widest, whatever the order in which they are let go.
    with tenant_transaction(tenant, pool=app_pool) as blocker:
        repo.hold_execution(blocker, execution_id)
        threads = [threading.Thread(target=decide, args=(decision,)) for decision in decisions]
        for thread in threads:
            thread.start()
        _until_blocked(pg.admin_url, blocker.info.backend_pid, DECIDERS)
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    assert len(answers) == DECIDERS

    applied = [decision for decision, answer in answers if answer == "applied"]
    assert len(applied) == 1, answers
    winner = applied[0]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        events = repo.events_after(conn, execution_id, 0, 10_000)
        step = next(row for row in store.list_steps(conn, execution_id) if row["step_id"] == "gate")
    decided = [event.type for event in events if event.type in DECISION_EVENTS]
    assert decided == ["approval_granted" if winner == "approve" else "approval_rejected"]
    ends = [event.type for event in events if event.type in ("step_completed", "step_failed")]
    assert ends == ["step_completed" if winner == "approve" else "step_failed"]
    assert step["state"] == ("succeeded" if winner == "approve" else "failed")

    # Each loser was answered as the same decision sent after the winner's is: repeated, or a 409 for the other one.
    sequential = {decision: _decide(app_pool, tenant, execution_id, decision) for decision in ("approve", "reject")}
    assert sequential == {winner: "repeated", ({"approve", "reject"} - {winner}).pop(): "not-waiting"}
    losers = list(answers)
    losers.remove((winner, "applied"))
    assert all(answer == sequential[decision] for decision, answer in losers), answers
