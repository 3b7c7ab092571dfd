# intent_ref: platform.rate-limits
"""A start's costly input check takes its tenant's turn at the process's check gate: a second waits, past the wait a
direct start is refused 429 check-busy, and a child's start waits for its turn however long it takes."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import shared.check_gate as check_gate
from shared.auth.principal import Requester
from shared.check_gate import CheckGate
from shared.db.session import tenant_transaction
from shared.engine import start_service
from shared.engine.start import InputCheck, PendingInputCheck, Started, StartRequest, checked_input
from shared.engine.start_service import begin
from shared.ingress.process import process_batch
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_child_start_precheck import Parent
from tests.integration.test_ingress_launch import _event, _executions, _validator
from tests.integration.test_ingress_rejections import _intent, _rows
from tests.integration.test_registry_api import problem
from tests.integration.test_start_decision_order import (  # noqa: F401  # the fixture
    DEPLOYER,
    Client,
    Decider,
    _production_intent,
    client,
)
from tests.integration.test_start_service import TaskHub

pytestmark = pytest.mark.integration

GATE_WAIT_S = 60.0
"""How long a test waits for a held check or a waiter at most: only a broken test waits that long."""
LARGE = "v" * (check_gate.COSTLY_BYTES + 1)
"""An input value past the gate's size as JSON, cheap to check against a string's schema."""


class _Signalling(threading.Condition):
    """The gate's condition, saying when a thread waits on it for a slot."""

    def __init__(self, waiting: threading.Event) -> None:
        super().__init__()
        self._waiting = waiting

    def wait(self, timeout: float | None = None) -> bool:
        self._waiting.set()  # under the gate's lock: a slot given back after this wakes the waiter
        return super().wait(timeout)


class WatchedGate(CheckGate):
    """A gate of one check per tenant, two in all, whose `turn_taken` is set once a thread waits for a slot or gives
    up on one (whichever it does, the slot's holder sees it before it gives the slot back)."""

    def __init__(self) -> None:
        super().__init__(per_tenant=1, per_process=2)
        self.turn_taken = threading.Event()
        self._changed = _Signalling(self.turn_taken)

    def enter(self, tenant_id: uuid.UUID, wait_s: float) -> bool:
        entered = super().enter(tenant_id, wait_s)
        if not entered:
            self.turn_taken.set()
        return entered


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[WatchedGate]:
    watched = WatchedGate()
    monkeypatch.setattr(check_gate, "get_check_gate", lambda: watched)
    yield watched
    assert watched.running() == 0  # every check gave its turn back


def _request(intent_id: str, value: str) -> StartRequest:
    return StartRequest(
        intent_id=uuid.UUID(intent_id),
        input={"version": value},
        requester=Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Deployer"}), app_only=False),
    )


def test_a_tenants_second_costly_start_waits_for_the_first_ones_check(
    api: ApiHarness, gate: WatchedGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ungated, both starts' checks ran at once on threads sharing the interpreter: one tenant's burst of large
    # inputs took every core the process has from the other tenants' requests and the health probe.
    name = f"burst-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _production_intent(api, name)
    first_in, release = threading.Event(), threading.Event()
    checks: list[str] = []
    check = checked_input

    def held_first(pending: PendingInputCheck, facts: Any) -> InputCheck:
        checks.append(pending.given_input["version"][-1])
        if len(checks) == 1:
            first_in.set()
            release.wait(GATE_WAIT_S)
        else:
            gate.turn_taken.set()  # ungated: the second check began while the first is held
        return check(pending, facts)

    monkeypatch.setattr(start_service, "checked_input", held_first)

    def start(last: str) -> Callable[[], Started]:
        request = _request(intent_id, LARGE[:-1] + last)
        return lambda: begin(tenant, lambda _conn: request, decide=Decider(allowed=True))

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(start("1"))
        try:
            assert first_in.wait(GATE_WAIT_S), "the first start's input was never checked"
            second = pool.submit(start("2"))
            assert gate.turn_taken.wait(GATE_WAIT_S), "the second start neither waited for its turn nor was checked"
            assert checks == ["1"], "the second start's check began while the first one's ran"
            assert gate.running(tenant.id) == 1
        finally:
            release.set()
        started = [first.result(), second.result()]
    assert checks == ["1", "2"] and all(one.created for one in started)
    # A small input costs no turn: it is checked at once while the tenant's costly one holds its turn.
    assert gate.enter(tenant.id, 0)
    try:
        request = _request(intent_id, "1.2.3")
        small = begin(tenant, lambda _conn: request, decide=Decider(allowed=True))
    finally:
        gate.leave(tenant.id)
    assert small.created and checks == ["1", "2", "3"]


def test_a_costly_execute_past_the_wait_for_its_turn_is_refused_429_check_busy(
    api: ApiHarness, client: Client, gate: WatchedGate
) -> None:
    name = f"busy-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _production_intent(api, name)
    path = f"/api/v1/intents/{intent_id}/execute"
    assert gate.enter(tenant.id, 0)  # the tenant's one costly check under way
    try:
        refused = api.client.post(path, json={"input": {"version": LARGE}}, headers=api.headers(name, DEPLOYER))
        body = problem(refused, 429)
        assert body["type"].endswith("/check-busy") and refused.headers["retry-after"] == "1"
        assert body["limit"] == 1
        small = api.client.post(path, json={"input": {"version": "1"}}, headers=api.headers(name, DEPLOYER))
        assert small.status_code == 202, small.text
    finally:
        gate.leave(tenant.id)
    with tenant_transaction(tenant.id) as conn:
        rows = conn.execute("SELECT input FROM app.executions WHERE intent_id = %s", (uuid.UUID(intent_id),))
        recorded = [row["input"] for row in rows.fetchall()]
    assert recorded == [{"version": "1"}], "the refused start wrote something"
    assert len(client.calls) == 1
    done = api.client.post(path, json={"input": {"version": LARGE}}, headers=api.headers(name, DEPLOYER))
    assert done.status_code == 202, done.text


def test_a_childs_costly_start_waits_for_its_turn_however_long_and_starts(
    api: ApiHarness, gate: WatchedGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a direct start's wait, the child's start gave up after the pool's wait with check-busy: the dispatch
    # failed, and a tenant's burst of large children outlasting its few quick retries failed the parent for good.
    # A wait of none makes any such giving up immediate.
    monkeypatch.setattr(check_gate, "get_settings", lambda: type("Settings", (), {"QP_DATABASE_POOL_TIMEOUT_S": 0.0})())
    parent = Parent(api)
    inputs = {"a": ["q"] * (check_gate.COSTLY_BYTES // 4 + 1)}
    assert check_gate.is_costly(inputs)

    assert gate.enter(parent.tenant.id, 0)  # the tenant's one costly check under way
    with ThreadPoolExecutor(1) as pool:
        answered = pool.submit(parent.start_child, inputs)
        try:
            assert gate.turn_taken.wait(GATE_WAIT_S), "the child's start never asked for its turn"
        finally:
            gate.leave(parent.tenant.id)
        answer = answered.result()
    assert "execution_id" in answer, answer
    assert parent.children() == [uuid.UUID(answer["execution_id"])]


def test_an_intent_requests_costly_start_waits_for_its_tenants_turn_and_starts_without_failing_its_batch(
    api: ApiHarness, gate: WatchedGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused busy after the pool's wait, the event failed its whole batch, and the batch's retries in place held the
    # partition, with every other tenant's events on it, for a quarter of an hour; the sender could keep its own turn
    # taken with large executes over HTTP (found by review). A wait of none makes any such giving up immediate.
    monkeypatch.setattr(check_gate, "get_settings", lambda: type("Settings", (), {"QP_DATABASE_POOL_TIMEOUT_S": 0.0})())
    name = f"gated-{uuid.uuid4().hex[:6]}"
    tenant = api.provision(name, quotas={"max_concurrent_executions": 100})
    intent_id = _intent(api, name)
    body = {"intent_id": intent_id, "input": {"n": LARGE}, "idempotency_key": "large"}
    events = [_event(api, name, body, int(uuid.uuid4().int % 1_000_000))]
    hub = TaskHub()
    assert gate.enter(tenant.id, 0)  # the tenant's one costly check under way
    with ThreadPoolExecutor(1) as pool:
        processed = pool.submit(asyncio.run, process_batch(events, hub, _validator(api)))
        try:
            assert gate.turn_taken.wait(GATE_WAIT_S), "the event's start never asked for its turn"
            assert not processed.done() and hub.calls == []  # waiting, not refused
        finally:
            gate.leave(tenant.id)
        [outcome] = processed.result()
    assert outcome.created and outcome.reason is None and len(hub.calls) == 1
    assert _rows(api, tenant.id) == 0 and len(_executions(api, tenant.id)) == 1
