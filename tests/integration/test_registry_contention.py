# intent_ref: platform.tenant-isolation
"""Registry saves and plans racing each other: a save's check made outside its transaction is taken whichever version
is current by then (it does not depend on it), a request's permission is recorded once, on the version it used, and
costly checks take turns (one per tenant, a few per process), a plan of a stored version checking it once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import shared.api.routers.registry as registry_router
import shared.check_gate as check_gate
from shared.check_gate import CheckGate, costly_check
from shared.registry import service as registry_service
from shared.registry.validation import validate_definition
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import INTENTS, etag_of, problem
from tests.integration.test_registry_check_outside_txn import (
    ADMIN,
    AUTHOR,
    GATE_WAIT_S,
    _body,
    _created,
    _put,
    _tenant,
    _while_checked,
)

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]


def _decisions(api: ApiHarness, tenant: str, action: str, request_id: str) -> list[dict[str, Any]]:
    """One request's authorization records (not its change's) on `action`."""
    return [
        row
        for row in api.audit_rows(tenant)
        if row["request_id"] == request_id and row["action"] == action and row["reason"] != "applied"
    ]


def _costly_body(name: str) -> dict[str, Any]:
    """A definition past the gate's size (`check_gate.COSTLY_BYTES`), cheap enough to check in a test."""
    properties = {f"p{k}": {"type": "string", "maxLength": 5} for k in range(600)}
    body = _body(name)
    body["definition"]["inputs"] = {"type": "object", "properties": properties}
    assert check_gate.is_costly(body)
    return body


# --- D2: a save's check does not depend on the current version ---------------------------------------------------


@pytest.mark.parametrize("operation", ["update with If-Match: *", "rollback without If-Match"])
def test_a_save_racing_another_takes_its_check_made_outside(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    # The save's check is held while another save of the item commits: the held one's check stands (its body, or the
    # version it rolls back to, is checked against the same catalog whichever version is current) and is taken.
    # Comparing the current version too threw it away, checked again, and under more contention a third time inside
    # the writing transaction, holding the row lock.
    tenant = _tenant(api, "stars")
    name = f"star-{uuid.uuid4().hex[:6]}"
    item_id = _created(api, tenant, _body(name))
    headers = api.headers(tenant, AUTHOR)
    # Version 2 differs from version 1, as version 3 will: the rollback onto 1 changes the steps either way (had it
    # changed none at first, its check would rightly be made again: the literal self-run is then looked for).
    assert _put(api, tenant, item_id, _body(name, seconds=3), "*").status_code == 200

    def other_save() -> None:
        assert _put(api, tenant, item_id, _body(name, seconds=5), "*").status_code == 200

    if operation.startswith("update"):

        def send() -> Any:
            return _put(api, tenant, item_id, _body(name, seconds=2), "*")

    else:

        def send() -> Any:
            return api.client.post(f"{INTENTS}/{item_id}/rollback", json={"to_version": 1}, headers=headers)

    response, gate, _ = _while_checked(api, monkeypatch, send, other_save)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 4
    assert gate.calls == 2  # the held save's check (taken) and the other save's; none made again


# --- D3: one decision record per request, on the version it used ---------------------------------------------------


def test_a_plan_racing_an_update_records_one_decision_on_the_version_planned(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = _tenant(api, "plans")
    name = f"planned-{uuid.uuid4().hex[:6]}"
    item_id = _created(api, tenant, _body(name))

    def update_meanwhile() -> None:
        assert _put(api, tenant, item_id, _body(name, seconds=9), etag_of(api, tenant, item_id)).status_code == 200

    response, _, _ = _while_checked(
        api,
        monkeypatch,
        lambda: api.client.post(f"{INTENTS}/{item_id}/plan", headers=api.headers(tenant, READER)),
        update_meanwhile,
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2
    records = _decisions(api, tenant, "intent.read", response.headers["x-request-id"])
    # One record for the request, naming the version planned, not the one it first met.
    assert [row["detail"] for row in records] == [{"operation": "plan", "version": 2}]


def test_a_rollback_racing_an_update_records_one_decision_on_the_item(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = _tenant(api, "rollbacks")
    name = f"rolled-{uuid.uuid4().hex[:6]}"
    item_id = _created(api, tenant, _body(name))
    headers = api.headers(tenant, AUTHOR)
    # An item whose definition changes the steps, so that the rollback's check is one of a different document.
    assert _put(api, tenant, item_id, _body(name, seconds=3), etag_of(api, tenant, item_id)).status_code == 200

    def update_meanwhile() -> None:
        assert _put(api, tenant, item_id, _body(name, seconds=4), "*").status_code == 200

    # The rollback's check is made once (D2), so its own attempts cannot add records; to make it meet two versions,
    # its first check is refused as stale once, as a catalog change would make it.
    real_check = registry_service.check
    stale = threading.Event()

    def check_once_stale(*args: Any, **kwargs: Any) -> Any:
        if "again" in kwargs and kwargs.get("outside") is not None and not stale.is_set():
            stale.set()
            raise registry_service.CheckStaleError("the catalog changed (a test's)")
        return real_check(*args, **kwargs)

    monkeypatch.setattr(registry_service, "check", check_once_stale)  # the rollback's alone: only it passes `again`
    response, _, _ = _while_checked(
        api,
        monkeypatch,
        lambda: api.client.post(f"{INTENTS}/{item_id}/rollback", json={"to_version": 1}, headers=headers),
        update_meanwhile,
    )
    assert response.status_code == 200, response.text
    assert stale.is_set()
    records = _decisions(api, tenant, "intent.rollback", response.headers["x-request-id"])
    # One decision on the stored item and one on the version the rollback makes (ADR 0011), whatever the attempts.
    assert [row["detail"] for row in records] == [{"to_version": 1}, {"to_version": 1, "version": 4}]


# --- D4: the last attempt decides on the locked row ----------------------------------------------------------------


def test_an_update_checked_in_its_transaction_is_decided_on_the_version_it_writes_on(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No check outside: every save goes straight to the last attempt (checked in the writing transaction). The held
    # update's first read of the item is followed by another update's commit; its decision must be on the version
    # its new version follows (locked), not on the one read before the lock.
    monkeypatch.setattr(registry_router, "CHECK_ATTEMPTS", 0)
    tenant = _tenant(api, "locked")
    name = f"locked-{uuid.uuid4().hex[:6]}"
    item_id = _created(api, tenant, _body(name))
    real_get = registry_service.get
    first_read = threading.Event()

    def read_then_another_update(*args: Any, **kwargs: Any) -> Any:
        # The first read of the item (the held update's, on its route's thread) is followed by another update's
        # commit, made from another thread; its own reads pass.
        item = real_get(*args, **kwargs)
        if not first_read.is_set():
            first_read.set()
            with ThreadPoolExecutor(1) as other:
                meanwhile = other.submit(_put, api, tenant, item_id, _body(name, seconds=6), "*")
                assert meanwhile.result(GATE_WAIT_S).status_code == 200
        return item

    monkeypatch.setattr(registry_service, "get", read_then_another_update)
    response = _put(api, tenant, item_id, _body(name, seconds=2), "*")
    assert response.status_code == 200, response.text
    written = response.json()["version"]
    records = _decisions(api, tenant, "intent.update", response.headers["x-request-id"])
    stored = [row["detail"] for row in records if "version" not in row["detail"]]
    assert stored == [{"from_version": written - 1}]
    assert response.json()["origin"] == {"kind": "update", "from_version": written - 1}


# --- D1: costly checks take turns ----------------------------------------------------------------------------------


def test_the_gate_admits_one_check_per_tenant_and_a_few_in_all() -> None:
    gate = CheckGate(per_tenant=1, per_process=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert gate.enter(a, 0)
    assert not gate.enter(a, 0)  # a tenant's second check waits (here: not at all) for its first
    assert gate.enter(b, 0)
    assert not gate.enter(c, 0)  # two in all
    entered = threading.Event()

    def waiting_a() -> None:
        if gate.enter(a, GATE_WAIT_S):
            entered.set()

    waiter = threading.Thread(target=waiting_a)
    waiter.start()
    assert not entered.is_set() and gate.running(a) == 1
    gate.leave(a)
    waiter.join(GATE_WAIT_S)
    assert entered.is_set() and gate.running(a) == 1 and gate.running() == 2
    gate.leave(a)
    gate.leave(b)
    assert gate.running() == 0
    with pytest.raises(RuntimeError):
        gate.leave(a)


@pytest.fixture
def one_check_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[CheckGate]:
    gate = CheckGate(per_tenant=1, per_process=2)
    monkeypatch.setattr(check_gate, "get_check_gate", lambda: gate)
    yield gate


def test_a_tenants_costly_check_waits_for_its_other_one_and_then_is_refused_429(
    api: ApiHarness, one_check_gate: CheckGate
) -> None:
    tenant, other = _tenant(api, "noisy"), _tenant(api, "quiet")
    busy_id = api.tenants[tenant].id
    assert one_check_gate.enter(busy_id, 0)  # the tenant's one check under way
    try:
        refused = api.client.post(INTENTS, json=_costly_body("waits"), headers=api.headers(tenant, AUTHOR))
        body = problem(refused, 429)
        assert body["type"].endswith("/check-busy") and refused.headers["retry-after"] == "1"
        # A small definition costs no turn; another tenant's costly one has its own.
        small = api.client.post(
            INTENTS, json=_body(f"small-{uuid.uuid4().hex[:6]}"), headers=api.headers(tenant, AUTHOR)
        )
        assert small.status_code == 201, small.text
        theirs = api.client.post(INTENTS, json=_costly_body("theirs"), headers=api.headers(other, AUTHOR))
        assert theirs.status_code == 201, theirs.text
        validated = api.client.post(
            f"{INTENTS}/validate", json=_costly_body("checked"), headers=api.headers(tenant, AUTHOR)
        )
        assert problem(validated, 429)["type"].endswith("/check-busy")
    finally:
        one_check_gate.leave(busy_id)
    assert one_check_gate.running() == 0  # every request gave its turn back
    done = api.client.post(INTENTS, json=_costly_body("turns"), headers=api.headers(tenant, AUTHOR))
    assert done.status_code == 201, done.text


def test_a_costly_check_waits_for_the_tenants_turn_holding_no_slot_of_another(one_check_gate: CheckGate) -> None:
    tenant = uuid.uuid4()
    order: list[str] = []
    first_in, second_waiting = threading.Event(), threading.Event()
    release = threading.Event()

    def first() -> None:
        with costly_check(tenant, wait_s=GATE_WAIT_S):
            order.append("first")
            first_in.set()
            release.wait(GATE_WAIT_S)

    def second() -> None:
        assert first_in.wait(GATE_WAIT_S)
        second_waiting.set()
        with costly_check(tenant, wait_s=GATE_WAIT_S):
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    assert second_waiting.wait(GATE_WAIT_S)
    assert order == ["first"]
    release.set()
    for thread in threads:
        thread.join(GATE_WAIT_S)
    assert order == ["first", "second"] and one_check_gate.running() == 0


# --- plan: a stored version is checked once --------------------------------------------------------------------------


def test_a_plan_of_a_stored_version_is_checked_once_until_the_catalog_changes(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    action = f"probe-{uuid.uuid4().hex[:6]}"
    tenant = _tenant(api, "replans", ("wait", action))
    name = f"replanned-{uuid.uuid4().hex[:6]}"
    item_id = _created(api, tenant, _body(name))
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return validate_definition(*args, **kwargs)

    monkeypatch.setattr(registry_service, "validate_definition", counted)

    def plan() -> dict[str, Any]:
        response = api.client.post(f"{INTENTS}/{item_id}/plan", headers=api.headers(tenant, READER))
        assert response.status_code == 200, response.text
        return dict(response.json())

    first, second = plan(), plan()
    assert len(calls) == 1  # the second plan took the first's check of version 1
    assert first["plan_hash"] == second["plan_hash"]
    registration = {"action": action, "params_schema": {"type": "object"}}
    registered = api.client.post("/api/v1/modules", json=registration, headers=api.headers(tenant, ADMIN))
    assert registered.status_code == 201, registered.text
    plan()
    assert len(calls) == 2  # the catalog it was checked against changed: checked again
    etag = etag_of(api, tenant, item_id)
    assert _put(api, tenant, item_id, _body(name, seconds=2), etag).status_code == 200
    calls.clear()
    assert plan()["version"] == 2
    assert len(calls) == 1  # a new version is a new check
