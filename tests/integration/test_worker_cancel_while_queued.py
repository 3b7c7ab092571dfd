# intent_ref: platform.execution
"""A claimed item still waiting for a module thread when its attempt ends (a cancel) never runs its module."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import module_threads, progress, worker
from shared.engine.protocol import WorkItem
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_module_worker_claims import (
    BOUND_S,
    _Batch,
    _dispatched,
    _Echo,
    _Gate,
    _Raiser,
    _row,
    _until,
    batches_held_whole,  # noqa: F401  # the fixture
    gate,  # noqa: F401  # the fixture
    no_module_thread_held,  # noqa: F401  # the fixture
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811
    return api.provision("cancel-while-queued").id


def _cancel(pool: ConnectionPool[Any], item: WorkItem) -> None:
    """End the item's attempt and its execution, as a cancel records them."""
    with tenant_transaction(item.tenant_id, pool=pool) as conn:
        progress.abandon_step(conn, AttemptKey(item.execution_id, item.step_id, item.phase, item.attempt), "cancelled")
        repo.transition(conn, item.execution_id, "cancelled", error="cancelled")


def _queued_behind_the_share(
    pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, echo: _Echo, monkeypatch: pytest.MonkeyPatch
) -> tuple[_Batch, WorkItem]:
    """A started batch whose gated items take their tenant's share of the threads, and its last item, claimed and
    waiting for a thread."""
    claim = worker._claim

    def claimed_after_the_gated_ones(item: WorkItem, *args: Any) -> Any:
        # The items' claims run concurrently: the echo item, claimed first, would take a place in the share itself.
        if item.action == echo.action:
            assert _until(lambda: len(gate.runs) == module_threads.TENANT_SHARE)
        return claim(item, *args)

    monkeypatch.setattr(worker, "_claim", claimed_after_the_gated_ones)
    slow = [_dispatched(pool, tenant, gate.action) for _ in range(module_threads.TENANT_SHARE)]
    late = _dispatched(pool, tenant, echo.action)
    batch = _Batch([*slow, late], _Raiser(), {gate.action: gate, echo.action: echo})
    batch.start()
    assert _until(lambda: _row(pool, late)["claimed_by"] is not None)
    return batch, late


def test_a_queued_item_whose_claim_a_heartbeat_found_lost_leaves_the_queue(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.2)  # the waiting copy looks at its claim soon after the cancel
    lost: list[AttemptKey] = []
    entered: list[str] = []
    renew, run_module = worker._still_held, worker._run_module

    def observed_renew(item: WorkItem, key: AttemptKey, owner: str) -> bool:
        held = renew(item, key, owner)
        if not held:
            lost.append(key)
        return held

    def observed_run(item: WorkItem, *args: Any) -> Any:
        entered.append(item.action)
        return run_module(item, *args)

    monkeypatch.setattr(worker, "_still_held", observed_renew)
    monkeypatch.setattr(worker, "_run_module", observed_run)
    echo = _Echo()
    batch, late = _queued_behind_the_share(app_pool, tenant, gate, echo, monkeypatch)
    _cancel(app_pool, late)
    key = AttemptKey(late.execution_id, late.step_id, late.phase, late.attempt)
    assert _until(lambda: key in lost)  # a heartbeat found the claim gone: the copy gave the attempt up
    gate.opened.set()
    assert batch.outcome() == module_threads.TENANT_SHARE  # the gated ones answered; nothing for the cancelled one
    # It left the queue when its copy gave it up: it never took a thread, so neither ran nor looked at its claim.
    assert echo.action not in entered and echo.runs == []
    assert _row(app_pool, late)["state"] == "abandoned"


def test_a_queued_item_whose_attempt_ended_before_its_thread_came_free_does_not_run(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No heartbeat comes before the thread is free: only the look at the claim before the start can stop the run.
    monkeypatch.setattr(worker, "HEARTBEAT_S", BOUND_S * 3)
    # Every run looks at its claim, however briefly it waited for its thread here.
    monkeypatch.setattr(worker, "FRESH_CLAIM_S", 0.0)
    echo = _Echo()
    batch, late = _queued_behind_the_share(app_pool, tenant, gate, echo, monkeypatch)
    _cancel(app_pool, late)
    gate.opened.set()
    assert batch.outcome() == module_threads.TENANT_SHARE
    assert echo.runs == []  # the work did not happen after the execution's end
    row = _row(app_pool, late)
    assert row["state"] == "abandoned" and row["error"] == "cancelled"


def test_an_item_that_waited_for_its_thread_runs_once_its_claim_still_holds(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "FRESH_CLAIM_S", 0.0)
    echo = _Echo()
    batch, late = _queued_behind_the_share(app_pool, tenant, gate, echo, monkeypatch)
    gate.opened.set()
    assert batch.outcome() == module_threads.TENANT_SHARE + 1
    assert echo.runs == [f"{late.execution_id}:work:1"]
    assert _row(app_pool, late)["state"] == "succeeded"


def test_an_item_whose_claim_the_database_could_not_confirm_before_its_start_does_not_run(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its claim may have lapsed to another copy while the database was out of reach: taken as held, the module ran
    # beside that copy's run.
    monkeypatch.setattr(worker, "FRESH_CLAIM_S", 0.0)
    echo = _Echo()
    batch, late = _queued_behind_the_share(app_pool, tenant, gate, echo, monkeypatch)

    def unreachable(*_: Any, **__: Any) -> bool:
        raise psycopg.OperationalError("the database is out of reach")

    monkeypatch.setattr(worker.store, "renew_claim", unreachable)
    gate.opened.set()
    failed = batch.outcome()  # the batch fails, so its delivery is retried
    assert isinstance(failed, RuntimeError) and "1 of 5 work items did not complete" in str(failed)
    assert echo.runs == []
    assert _row(app_pool, late)["state"] == "dispatched"  # no result recorded: the retry runs it
