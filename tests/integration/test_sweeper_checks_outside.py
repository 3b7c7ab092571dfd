# intent_ref: platform.tenant-isolation
"""The sweeper's rebuild of a recorded execution's input (a stalled start it relaunches, a running one whose stalls it
records) checks the input and the version's definition with no pooled connection held, taking its tenant's turn at
the check gate; a stall plan checks the definition only; the turn is waited for a short while only, and a tenant whose
turn does not come has that execution left for a later run while the run goes on (expired leases are ended first);
and a run stuck compensating has its input asked for only within the sweep's status-call budget."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.check_gate import COSTLY_BYTES, get_check_gate, is_costly
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import stalls, sweeper
from shared.engine import start as start_module
from shared.engine.start import StartRequest, start_execution
from shared.engine.steps import AttemptKey
from shared.registry import service as registry_service
from shared.tenants.models import Tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.pool_of_one_harness import (  # noqa: F401  # the fixture one_connection
    GATE_WAIT_S,
    INPUT_SCHEMA,
    Gate,
    one_connection,
    other_tenants_transaction_completes,
    tenant_record,
)
from tests.integration.test_execution_sweeper import FakeDurable, _status
from tests.integration.test_executions import _execution as _bare_execution
from tests.integration.test_expiry_lock_order import _expire, _leased
from tests.integration.test_sweeper_stuck_compensation import Durable, _execution, _execution_now, _stuck

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
SCHEMA = INPUT_SCHEMA
LARGE = {"a": ["q"] * (COSTLY_BYTES // 4)}
"""A valid input that alone makes its check costly (a slot of the gate)."""
LARGE_SCHEMA = {**SCHEMA, "description": "d" * COSTLY_BYTES}
"""SCHEMA, in a definition that alone makes its check costly."""
HELD = {"input": (start_module, "evaluate_tenant_schema"), "definition": (registry_service, "validate_definition")}
_BACKDATE_CLAIM = "UPDATE app.executions SET start_claimed_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"
_BACKDATE_UPDATE = "UPDATE app.executions SET updated_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"


def _named(api: ApiHarness) -> tuple[Tenant, str]:
    """A new tenant, and the name its callers' tokens give."""
    name = f"rebuilt-{uuid.uuid4().hex[:6]}"
    return tenant_record(api.provision(name, allowed_modules=["wait"]).id), name


def _recorded(
    api: ApiHarness, *, stalled: bool, schema: dict[str, Any] = SCHEMA, of: tuple[Tenant, str] | None = None
) -> tuple[Tenant, uuid.UUID]:
    """A new tenant (or `of`) whose intent checks its input against `schema`, and an execution of it with input
    LARGE: a start whose starter died after its commit (`stalled`, its claim stale), else one its orchestration runs."""
    tenant, name = _named(api) if of is None else of
    body = {
        "name": f"checked-{uuid.uuid4().hex[:8]}",
        "definition": {"target": "staging", "inputs": schema, "steps": [{"id": "w", "action": "wait", "seconds": 1}]},
    }
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(name, AUTHOR))
    assert created.status_code == 201, created.text
    request = StartRequest(
        intent_id=uuid.UUID(created.json()["id"]), input=LARGE, requester=Requester("t/o", frozenset(), app_only=False)
    )
    with tenant_transaction(tenant.id) as conn:
        started = start_execution(conn, tenant.facts(), request, max_concurrent=1000, authorize=lambda _item: None)
        if stalled:
            conn.execute(_BACKDATE_CLAIM, (started.execution.id,))
        else:
            repo.transition(conn, started.execution.id, "running")
    return tenant, started.execution.id


def _while_held(
    monkeypatch: pytest.MonkeyPatch, held: str, tenant: Tenant, other: Tenant, work: Any
) -> tuple[Any, Gate, bool, int]:
    """Run `work` while the check `held` is held: answers its result, the held gate, whether another tenant's
    transaction completed meanwhile, and how many of the check gate's slots the tenant held meanwhile."""
    module, function = HELD[held]
    gate = Gate()
    monkeypatch.setattr(module, function, gate.wrap(getattr(module, function)))
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(work)
        try:
            assert gate.entered.wait(GATE_WAIT_S), f"{function} was never called"
            turns = get_check_gate().running(tenant.id)
            completed = other_tenants_transaction_completes(other.id)
        finally:
            gate.released.set()
        result = done.result()
    return result, gate, completed, turns


@pytest.mark.parametrize("held", ["input", "definition"])
def test_the_sweepers_relaunch_of_a_stalled_start_checks_at_the_gate_holding_no_connection(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    tenant, execution_id = _recorded(api, stalled=True)
    other = tenant_record(api.provision(f"other-{uuid.uuid4().hex[:6]}").id)
    client = FakeDurable()

    result, gate, completed, turns = _while_held(
        monkeypatch, held, tenant, other, lambda: asyncio.run(sweeper.sweep_tenant(tenant.id, client))
    )

    assert completed, f"another tenant's transaction found no connection while the sweeper checked the {held}"
    assert turns == 1, "the sweeper's costly check did not take its tenant's turn at the check gate"
    assert is_costly(LARGE)
    # Checked once, outside, and taken by the rebuild's transaction: started with its recorded input.
    assert gate.calls == 1 and (result.started, result.checked) == (1, 1)
    [(_, instance_id, started_input)] = client.started
    assert instance_id == str(execution_id) and started_input["inputs"] == LARGE
    with tenant_transaction(other.id) as conn:  # the pool of one was given back
        conn.execute("SELECT 1")


@pytest.mark.parametrize("schema", [SCHEMA, LARGE_SCHEMA], ids=["small-definition", "large-definition"])
def test_a_stall_plan_checks_the_definition_at_the_gate_holding_no_connection_and_not_the_input(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, schema: dict[str, Any]
) -> None:
    # Replaces the test that held the stall plan's input check: the plan reads only the steps' timeouts, so the
    # recorded input (LARGE, its check costly) is no longer checked against its schema at all.
    tenant, execution_id = _recorded(api, stalled=False, schema=schema)
    other = tenant_record(api.provision(f"other-{uuid.uuid4().hex[:6]}").id)
    inputs_checked = _counted(monkeypatch, *HELD["input"])

    found, gate, completed, turns = _while_held(
        monkeypatch, "definition", tenant, other, lambda: stalls.record_stalls(tenant.id, execution_id)
    )

    assert completed, "another tenant's transaction found no connection while the sweeper checked the definition"
    assert found == [] and gate.calls == 1  # nothing is overdue; the definition checked once, outside
    # Before: the input was checked against its schema every time (and its size took the tenant's turn).
    assert inputs_checked() == 0, "the stall plan checked the execution's input against its schema"
    # The definition alone is weighed: a costly one takes its tenant's turn, a small one runs at once.
    assert turns == int(schema is LARGE_SCHEMA)


def _counted(monkeypatch: pytest.MonkeyPatch, module: Any, function: str) -> Callable[[], int]:
    """`module.function` counting its calls; answers the count so far."""
    real, calls = getattr(module, function), [0]

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, counting)
    return lambda: calls[0]


@contextmanager
def _turn_taken(tenant_id: uuid.UUID) -> Iterator[None]:
    """The tenant's turn at the check gate held by another of its checks (a large definition being saved, say)."""
    gate = get_check_gate()
    assert gate.enter(tenant_id, 0), "the tenant's turn was taken already"
    try:
        yield
    finally:
        gate.leave(tenant_id)


def _only(monkeypatch: pytest.MonkeyPatch, tenants: list[uuid.UUID]) -> None:
    """The sweep's tenants: of those with candidates, only `tenants` (the database is shared with other tests), in
    the order the platform's function gives them."""
    real = sweeper.stuck_tenants

    def stuck(max_tenants: int = sweeper.MAX_TENANTS, **kwargs: Any) -> list[uuid.UUID]:
        return [found for found in real(100_000, **kwargs) if found in tenants][:max_tenants]

    monkeypatch.setattr(sweeper, "stuck_tenants", stuck)


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """`work` on a thread of its own (the test can free what it waits on if it hangs); its result in "r"."""
    done: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.setdefault("r", work()), daemon=True)
    thread.start()
    return thread, done


def _swept_at(tenant_id: uuid.UUID, execution_id: uuid.UUID) -> Any:
    with tenant_transaction(tenant_id) as conn:
        row = conn.execute("SELECT swept_at FROM app.executions WHERE id = %s", (execution_id,)).fetchone()
    assert row is not None
    return row["swept_at"]


def test_a_sweep_leaves_a_busy_tenants_checks_for_a_later_run_and_goes_on_with_the_others(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tenant A: a stalled start whose input's check is costly, and a quiet running execution whose stall plan's
    # definition check is costly; tenant B: a quiet running execution, swept after A (stalled starts first).
    named_a = _named(api)
    a, stalled = _recorded(api, stalled=True, of=named_a)
    _, quiet_a = _recorded(api, stalled=False, schema=LARGE_SCHEMA, of=named_a)
    b, quiet_b = _recorded(api, stalled=False)
    for tenant, execution_id in ((a, quiet_a), (b, quiet_b)):
        with tenant_transaction(tenant.id) as conn:
            conn.execute(_BACKDATE_UPDATE, (execution_id,))
    _only(monkeypatch, [a.id, b.id])
    assert sweeper.stuck_tenants() == [a.id, b.id]
    client = FakeDurable({quiet_a: _status("Running"), quiet_b: _status("Running")})

    with _turn_taken(a.id):
        thread, done = _in_thread(lambda: asyncio.run(sweeper.sweep(client, pool=app_pool, control_pool=control_pool)))
        thread.join(GATE_WAIT_S)
        # Before: the sweeper waited for A's turn without a deadline, and B was never asked about.
        assert not thread.is_alive(), "the sweep waited for a busy tenant's turn at the check gate"

    result = done["r"]
    assert str(quiet_b) in client.asked, "the other tenant's quiet execution was not asked about"
    assert _swept_at(b.id, quiet_b) is not None
    # A's two were left for a later run, the tenant's sweep not failed: the start pending (not ended failed, not
    # started), the running one not recorded as swept (it keeps its place at the front).
    assert (result.failed_tenants, result.busy, result.started) == (0, 2, 0)
    assert str(stalled) not in client.started_ids()
    with tenant_transaction(a.id) as conn:
        assert repo.get_execution(conn, stalled).status == "pending"
    assert _swept_at(a.id, quiet_a) is None

    # A later run, the turn free and the claim stale (as it is a minute on): both taken.
    with tenant_transaction(a.id) as conn:
        conn.execute(_BACKDATE_CLAIM, (stalled,))
    again = asyncio.run(sweeper.sweep(client, pool=app_pool, control_pool=control_pool))

    assert (again.failed_tenants, again.busy, again.started) == (0, 0, 1)
    [(_, instance_id, started_input)] = client.started
    assert instance_id == str(stalled) and started_input["inputs"] == LARGE
    assert _swept_at(a.id, quiet_a) is not None


def test_a_sweep_ends_expired_leases_while_a_tenants_check_waits_for_its_turn(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
    pg: Any,
) -> None:
    a, stalled = _recorded(api, stalled=True)
    leasing = tenant_record(api.provision(f"leases-{uuid.uuid4().hex[:6]}").id)
    running = _bare_execution(app_pool, leasing.id, path=["running"])
    key = AttemptKey(running.id, "s1", "run", 1)
    _leased(app_pool, leasing.id, [key], f"exp-{uuid.uuid4().hex[:6]}")
    _expire(pg.admin_url, [key])  # its worker stopped heartbeating
    _only(monkeypatch, [a.id])
    # The sweeper's wait for A's turn made long enough to look at the run while it waits (without the constant, the
    # wait had no deadline).
    monkeypatch.setattr(sweeper, "CHECK_WAIT_S", GATE_WAIT_S, raising=False)
    client = FakeDurable()
    gate = get_check_gate()

    with _turn_taken(a.id):
        thread, _ = _in_thread(lambda: asyncio.run(sweeper.sweep(client, pool=app_pool, control_pool=control_pool)))
        for _ in range(int(GATE_WAIT_S / 0.01)):
            if gate.waiting() or not thread.is_alive():
                break
            time.sleep(0.01)
        assert gate.waiting() == 1, "the sweep did not wait for A's turn"
        # Before: the leases were ended after every tenant's sweep, this one waiting for A's turn.
        expired = [instance for instance, _, _ in client.raised]
        assert str(running.id) in expired, "the expired lease waited for another tenant's checks"
    thread.join(GATE_WAIT_S)
    assert not thread.is_alive()
    assert str(stalled) in client.started_ids()  # the turn came: A's start taken in the same run


def test_a_stuck_runs_input_is_asked_for_only_within_the_budget_and_it_keeps_its_turn(
    api: ApiHarness, app_pool: ConnectionPool[Any], new_tenant: Any
) -> None:
    # Two quiet executions: one running (one status call), then one stuck compensating under rules 7, whose input
    # would be a second status call.
    tenant = new_tenant()
    running = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute(_BACKDATE_UPDATE, (running.id,))  # quieter: asked after first
    run, stuck_id = _stuck(app_pool, tenant, rules=7)
    client = Durable(run)

    first = asyncio.run(sweeper.sweep_tenant(tenant, client, budget=2, quiet_s=0.0, pool=app_pool))

    # Before: three status calls on a budget of two (the input's was not counted), and the stuck run ended.
    assert len(client.asked) <= 2, f"{len(client.asked)} status calls on a budget of 2: {client.asked}"
    assert client.asked == [str(running.id), str(stuck_id)]
    assert (first.checked, first.inputs, first.calls, first.ended) == (2, 0, 2, 0)
    assert client.terminated == [] and _execution_now(app_pool, tenant, stuck_id).status == "compensating"

    # Not recorded as swept, the stuck run comes first in the next run, which has room for its input and ends it.
    second = asyncio.run(sweeper.sweep_tenant(tenant, client, budget=2, quiet_s=0.0, pool=app_pool))

    assert client.asked[2:] == [str(stuck_id), str(stuck_id)]
    assert (second.checked, second.inputs, second.calls, second.ended) == (1, 1, 2, 1)
    assert [instance for instance, _ in client.terminated] == [str(stuck_id)]
    assert _execution_now(app_pool, tenant, stuck_id).status == "failed"
