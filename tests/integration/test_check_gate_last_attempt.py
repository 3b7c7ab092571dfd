# intent_ref: platform.rate-limits
"""A save's or a start's last attempt, checked inside its writing transaction once both outside checks went stale,
takes its tenant's turn at the check gate too (before the transaction opens, held across it): ungated, a tenant whose
checks kept going stale ran a costly check beside its other one, past the gate's one per tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

import shared.check_gate as check_gate
from shared.check_gate import CheckGate
from shared.engine import start as engine
from shared.engine import start_service
from shared.engine.start import InputCheck, PendingInputCheck
from shared.engine.start_service import begin
from shared.registry import service as registry_service
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_check_outside_txn import _body, _created, _put, _tenant
from tests.integration.test_registry_contention import _costly_body
from tests.integration.test_start_check_gate import LARGE, _request
from tests.integration.test_start_decision_order import Decider, _production_intent

pytestmark = pytest.mark.integration


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[CheckGate]:
    fresh = CheckGate(per_tenant=1, per_process=2)
    monkeypatch.setattr(check_gate, "get_check_gate", lambda: fresh)
    yield fresh
    assert fresh.running() == 0  # every check gave its turn back


def test_a_saves_last_check_in_its_transaction_holds_the_tenants_turn(
    api: ApiHarness, gate: CheckGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = _tenant(api, "lastsave")
    tenant_id = api.tenants[tenant].id
    name = f"last-{uuid.uuid4().hex[:6]}"
    item_id = _created(api, tenant, _body(name))
    real_check = registry_service.check
    stale = 0
    turns_inside: list[int] = []

    def stale_outside(*args: Any, **kwargs: Any) -> Any:
        # Every check made outside is refused as stale, as a catalog changed each time would make it; the check the
        # last attempt makes in its transaction sees how many of the tenant's turns are held as it runs.
        nonlocal stale
        if kwargs.get("outside") is not None:
            stale += 1
            raise registry_service.CheckStaleError("the catalog changed (a test's)")
        turns_inside.append(gate.running(tenant_id))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(registry_service, "check", stale_outside)
    response = _put(api, tenant, item_id, _costly_body(name), "*")
    assert response.status_code == 200, response.text
    assert stale == 2, "both outside checks were not taken as stale"
    assert turns_inside and all(held == 1 for held in turns_inside), turns_inside


def test_a_starts_last_check_in_its_transaction_holds_the_tenants_turn(
    api: ApiHarness, gate: CheckGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"laststart-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _production_intent(api, name)
    real_checked_input = start_service.checked_input
    real_input_problems = engine._input_problems
    outside = 0
    checking_outside = False
    turns_inside: list[int] = []

    def checked_for_another_version(pending: PendingInputCheck, facts: Any) -> InputCheck:
        # Every check made outside stands for another version than the one the start's transaction runs: stale, as a
        # new current version saved during each check would make it.
        nonlocal outside, checking_outside
        outside += 1
        checking_outside = True
        try:
            made = real_checked_input(pending, facts)
        finally:
            checking_outside = False
        return replace(made, version=made.version + 1000)

    def input_problems(schema: dict[str, Any] | None, values: dict[str, Any]) -> list[dict[str, str]]:
        if not checking_outside:
            turns_inside.append(gate.running(tenant.id))
        return real_input_problems(schema, values)

    monkeypatch.setattr(start_service, "checked_input", checked_for_another_version)
    monkeypatch.setattr(engine, "_input_problems", input_problems)
    request = _request(intent_id, LARGE)
    started = begin(tenant, lambda _conn: request, decide=Decider(allowed=True))
    assert started.created
    assert outside == start_service.INPUT_CHECK_ATTEMPTS
    assert turns_inside == [1], turns_inside
