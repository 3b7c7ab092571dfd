# intent_ref: platform.tenant-isolation
"""The sweeper's rebuild of a recorded execution's input (a stalled start it relaunches, a running one whose stalls it
records) checks the input and the version's definition with no pooled connection held, taking its tenant's turn at
the check gate; and a run stuck compensating has its input asked for only within the sweep's status-call budget."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
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
from shared.registry import service as registry_service
from shared.tenants.models import Tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.pool_of_one_harness import (  # noqa: F401  # the fixture one_connection
    GATE_WAIT_S,
    Gate,
    one_connection,
    other_tenants_transaction_completes,
    tenant_record,
)
from tests.integration.test_execution_sweeper import FakeDurable
from tests.integration.test_sweeper_stuck_compensation import Durable, _execution, _execution_now, _stuck

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "array", "contains": {"type": "string", "pattern": "^q$"}, "minContains": 2}},
}
LARGE = {"a": ["q"] * (COSTLY_BYTES // 4)}
"""A valid input that alone makes its check costly (a slot of the gate)."""
HELD = {"input": (start_module, "evaluate_tenant_schema"), "definition": (registry_service, "validate_definition")}
_BACKDATE_CLAIM = "UPDATE app.executions SET start_claimed_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"
_BACKDATE_UPDATE = "UPDATE app.executions SET updated_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"


def _recorded(api: ApiHarness, *, stalled: bool) -> tuple[Tenant, uuid.UUID]:
    """A new tenant whose intent checks its input against SCHEMA, and an execution of it with input LARGE: a start
    whose starter died after its commit (`stalled`, its claim stale), else one its orchestration runs."""
    name = f"rebuilt-{uuid.uuid4().hex[:6]}"
    tenant = tenant_record(api.provision(name, allowed_modules=["wait"]).id)
    body = {
        "name": f"checked-{uuid.uuid4().hex[:8]}",
        "definition": {"target": "staging", "inputs": SCHEMA, "steps": [{"id": "w", "action": "wait", "seconds": 1}]},
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


def test_a_stall_records_rebuild_checks_at_the_gate_holding_no_connection(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, execution_id = _recorded(api, stalled=False)
    other = tenant_record(api.provision(f"other-{uuid.uuid4().hex[:6]}").id)

    found, gate, completed, turns = _while_held(
        monkeypatch, "input", tenant, other, lambda: stalls.record_stalls(tenant.id, execution_id)
    )

    assert completed, "another tenant's transaction found no connection while the sweeper checked the input"
    assert turns == 1, "the sweeper's costly check did not take its tenant's turn at the check gate"
    assert found == [] and gate.calls == 1  # nothing is overdue; checked once, outside


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
