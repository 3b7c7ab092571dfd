# intent_ref: platform.execution
"""A cancel answered 202 ends the run cancelled (ADR 0014, rules 7) when the step's final failure recorded after it is
an approval's rejection or a remote lease's expiry, even when that verdict reaches the orchestration first."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.api.routers import work
from shared.db.session import tenant_transaction
from shared.engine import control, machine, progress, sweeper, work_queue
from shared.engine import executions as repo
from shared.engine.protocol import CANCEL_EVENT, approval_event
from tests.integration.cancel_race_harness import (
    ACTION,
    Orchestration,
    assert_cancelled,
    cancel,
    end_of_run,
    lease,
    seeded_execution,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


class _Client:
    """The Durable client as the recorders see it: the events they raise are kept, for the test to deliver."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, str, Any]] = []

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        self.raised.append((instance_id, event_name, event_data))


def _ended(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, run: Orchestration, execution_id: uuid.UUID
) -> tuple[repo.Execution, list[str]]:
    run.raise_event(CANCEL_EVENT, {"by": "alice"})  # the cancel's event, raised after its 202, comes last
    return end_of_run(pool, tenant_id, run, execution_id)


def _expire(conn: repo.Conn, item_id: uuid.UUID) -> None:
    """The worker stopped heartbeating: its lease has run out (set, not waited for)."""
    conn.execute(
        "UPDATE app.work_items SET lease_expires_at = clock_timestamp() - interval '1 second' WHERE id = %s",
        (item_id,),
    )


def _reject(tenant_id: uuid.UUID, execution_id: uuid.UUID) -> control.ApprovalOutcome:
    """The approval route's recording of a rejection (its transaction)."""
    with tenant_transaction(tenant_id) as conn:
        return control.decide_approval(
            conn, execution_id, "gate", "reject", principal_id="tid/approver", object_id="approver", comment="no"
        )


def test_an_approval_rejected_after_an_accepted_cancel_ends_the_run_cancelled_though_its_verdict_came_first(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Before: `decide_approval` raised the rejection's verdict unmarked, so a rejection that reached the run before
    the cancel's event failed it after the cancel was answered 202 "ends cancelled"."""
    tenant_id = new_tenant()
    execution = seeded_execution(app_pool, tenant_id, "gate", "approval")
    run = Orchestration(
        tenant_id, execution.id, {"id": "gate", "action": "approval", "depends_on": []}, {"kind": "approval"}
    )
    assert cancel(tenant_id, execution.id) == []
    outcome = _reject(tenant_id, execution.id)
    assert outcome.applied and outcome.verdict["ok"] is False
    # The same rejection again (a client that got no answer), while the run waits: answered as first raised.
    again = _reject(tenant_id, execution.id)
    run.raise_event(approval_event("gate", outcome.key.attempt), outcome.verdict)
    ended, events = _ended(app_pool, tenant_id, run, execution.id)
    assert_cancelled(ended, events)
    assert "approval_rejected" in events
    assert outcome.verdict.get("cancel_first") is True
    assert (again.applied, again.verdict) == (False, outcome.verdict)


@contextlib.contextmanager
def _only_tenant(tenant_id: uuid.UUID) -> Iterator[Any]:
    """The sweeper's platform-wide read of tenants with expired leases, answering only this test's tenant (others'
    leases, in a shared database, are not this test's to end)."""

    class _Rows:
        def execute(self, *_: Any) -> Any:
            class _Result:
                def fetchall(self) -> list[dict[str, str]]:
                    return [{"tenant_id": str(tenant_id)}]

            return _Result()

    yield _Rows()


def _expire_by_sweeper(
    monkeypatch: pytest.MonkeyPatch, pool: ConnectionPool[Any], tenant_id: uuid.UUID, client: _Client
) -> None:
    monkeypatch.setattr(sweeper, "platform_transaction", lambda pool=None: _only_tenant(tenant_id))
    assert asyncio.run(sweeper.expire_work_leases(client, pool=pool)) == 1


def _expire_by_poll(
    monkeypatch: pytest.MonkeyPatch, pool: ConnectionPool[Any], tenant_id: uuid.UUID, client: _Client
) -> None:
    """A worker's lease call: its round ends the tenant's expired leases (nothing else is queued to lease)."""
    ended, leases = work._lease(tenant_id, work.LeaseRequest(actions=[ACTION]), "w2", first=False)
    assert leases == [] and len(ended) == 1
    asyncio.run(work.hand_over_verdicts(client, tenant_id, ended))


_EXPIRERS = {"sweeper": _expire_by_sweeper, "poll": _expire_by_poll}


@pytest.mark.parametrize("expirer", sorted(_EXPIRERS))
def test_a_lease_expiring_after_an_accepted_cancel_ends_the_run_cancelled_though_its_verdict_came_first(
    app_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
    expirer: str,
) -> None:
    """Before: `expire_leases`' callers raised the step's last attempt's `timed_out` verdict unmarked, so an expiry
    that reached the run before the cancel's event failed it after the cancel was answered 202."""
    tenant_id = new_tenant()
    execution = seeded_execution(app_pool, tenant_id)
    run = Orchestration(tenant_id, execution.id, {"id": "build", "action": ACTION, "image": "x:1"})
    taken = lease(tenant_id)
    assert cancel(tenant_id, execution.id) == []  # leased: the cancel lets it end
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        _expire(conn, taken.item.id)
    client = _Client()
    _EXPIRERS[expirer](monkeypatch, app_pool, tenant_id, client)
    ((instance, name, verdict),) = client.raised
    assert instance == str(execution.id) and name == taken.item.key.event_name
    run.raise_event(name, verdict)
    ended, events = _ended(app_pool, tenant_id, run, execution.id)
    assert_cancelled(ended, events)
    assert verdict["state"] == "timed_out" and verdict.get("cancel_first") is True


def test_a_lease_expiring_without_a_cancel_says_nothing_of_one(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant_id = new_tenant()
    execution = seeded_execution(app_pool, tenant_id, path=["running"])
    start = machine.StepStart(
        step_id="build", phase="run", attempt=1, kind="module", action=ACTION, params={}, remote=True, timeout_s=60
    )
    progress.dispatch_steps(
        machine.DispatchSteps(execution_id=str(execution.id), tenant_id=str(tenant_id), starts=[start])
    )
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        (taken,) = work_queue.lease(conn, tenant_id, actions=[ACTION], max_items=1, lease_s=60, worker="w").leases
        _expire(conn, taken.item.id)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        (expired,) = work_queue.expire_leases(conn)
    assert expired.key == taken.item.key
    assert expired.verdict() == {
        "ok": False,
        "error": work_queue.LEASE_EXPIRED_ERROR,
        "retryable": True,
        "state": "timed_out",
    }
