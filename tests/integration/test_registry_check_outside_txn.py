# intent_ref: platform.tenant-isolation
"""A registry save's or plan's definition check holds no pooled connection: create, update, rollback and plan check
between two transactions, so another tenant's transaction gets a connection from a pool of one while they run, and the
writing transaction takes the check's outcome only while what it read (the catalog, a blueprint's current version, the
item's current version) still stands."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.registry import service as registry_service
from shared.registry.validation import validate_definition
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.pool_of_one_harness import (  # noqa: F401  # the fixture one_connection
    GATE_WAIT_S,
    one_connection,
    other_tenants_transaction_completes,
)
from tests.integration.test_registry_api import BLUEPRINTS, INTENTS, etag_of, problem, wait_step

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
ADMIN = ["Tenant.Admin"]
SCHEMA = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string", "pattern": "^q$"}}}}


class Gate:
    """Holds the first call of a wrapped function until released (running `meanwhile` first, if given), and counts
    every call; later calls (those `meanwhile` makes included) pass at once."""

    def __init__(self, meanwhile: Callable[[], None] | None = None) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.calls = 0
        self._meanwhile = meanwhile

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                try:
                    if self._meanwhile is not None:
                        self._meanwhile()
                finally:  # a failing `meanwhile` fails the request, not the wait for it
                    self.entered.set()
                self.released.wait(GATE_WAIT_S)
            return real(*args, **kwargs)

        return held


def _tenant(api: ApiHarness, prefix: str, modules: tuple[str, ...] = ("wait",)) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    api.provision(name, allowed_modules=list(modules))
    return name


def _body(name: str, seconds: int = 1, **definition: Any) -> dict[str, Any]:
    return {
        "name": name,
        "definition": {"target": "staging", "inputs": SCHEMA, "steps": [wait_step("w", seconds)], **definition},
    }


def _created(api: ApiHarness, tenant: str, body: dict[str, Any], path: str = INTENTS, roles: list[str] = AUTHOR) -> str:
    response = api.client.post(path, json=body, headers=api.headers(tenant, roles))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _put(api: ApiHarness, tenant: str, item_id: str, body: dict[str, Any], etag: str) -> Any:
    headers = {**api.headers(tenant, AUTHOR), "If-Match": etag}
    return api.client.put(f"{INTENTS}/{item_id}", json=body, headers=headers)


def _while_checked(
    api: ApiHarness,
    monkeypatch: pytest.MonkeyPatch,
    send: Callable[[], Any],
    meanwhile: Callable[[], None] | None = None,
) -> tuple[Any, Gate, bool]:
    """`send()`'s response, its definition check held until another tenant's transaction has been tried (after
    `meanwhile`, run as the check begins); the gate, and whether that transaction got a connection."""
    other = _tenant(api, "other")
    gate = Gate(meanwhile)
    monkeypatch.setattr(registry_service, "validate_definition", gate.wrap(validate_definition))
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(send)
        try:
            assert gate.entered.wait(GATE_WAIT_S), "the definition was never checked"
            completed = other_tenants_transaction_completes(api.tenants[other].id)
        finally:
            gate.released.set()
        response = answer.result()
    return response, gate, completed


def _allows(api: ApiHarness, tenant: str, action: str) -> int:
    """The authorization records (not the change's own) that allow `action` in `tenant`'s trail."""
    rows = api.audit_rows(tenant)
    return sum(
        1 for row in rows if row["action"] == action and row["decision"] == "allow" and row["reason"] != "applied"
    )


@pytest.mark.parametrize("operation", ["create", "create refused", "update", "rollback", "plan"])
def test_a_registry_check_holds_no_connection_and_answers_as_before(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    tenant = _tenant(api, "checks")
    headers = api.headers(tenant, AUTHOR)
    name = f"checked-{uuid.uuid4().hex[:6]}"
    if operation.startswith("create"):
        body = _body(name)
        if operation == "create refused":
            body["definition"]["steps"] = [{"id": "w", "action": "nowhere.to-be-found"}]

        def send() -> Any:
            return api.client.post(INTENTS, json=body, headers=headers)

        action, expected = "intent.create", (201 if operation == "create" else 422)
    else:
        item_id = _created(api, tenant, _body(name))
        updated = _put(api, tenant, item_id, _body(name, seconds=2), etag_of(api, tenant, item_id))
        assert updated.status_code == 200, updated.text
        etag = updated.headers["etag"]
        if operation == "update":

            def send() -> Any:
                return _put(api, tenant, item_id, _body(name, seconds=3), etag)

            action = "intent.update"
        elif operation == "rollback":

            def send() -> Any:
                return api.client.post(f"{INTENTS}/{item_id}/rollback", json={"to_version": 1}, headers=headers)

            action = "intent.rollback"
        else:

            def send() -> Any:
                return api.client.post(f"{INTENTS}/{item_id}/plan", headers=headers)

            action = "intent.read"
        expected = 200
    allowed_before = _allows(api, tenant, action)
    response, gate, completed = _while_checked(api, monkeypatch, send)
    assert completed, f"another tenant's transaction found no connection while the {operation} was checked"
    assert response.status_code == expected, response.text
    assert gate.calls == 1  # checked once, outside the transactions, and not again inside them
    if operation == "create refused":
        refused = problem(response, 422)
        assert refused["type"].endswith("/invalid-definition")
        assert [error["pointer"] for error in refused["errors"]] == ["/definition/steps/0/action"]
    elif operation == "update":
        assert response.json()["version"] == 3 and response.json()["definition"]["steps"][0]["params"]["seconds"] == 3
    elif operation == "rollback":
        assert response.json()["version"] == 3 and response.json()["origin"] == {"kind": "rollback", "from_version": 1}
        assert response.json()["definition"]["steps"][0]["params"]["seconds"] == 1
    elif operation == "plan":
        assert response.json()["version"] == 2 and response.json()["levels"] == [["w"]]
    # The request's decisions are recorded once each, though it now spans two transactions: on the item (or body), and
    # for an update or a rollback on the version it makes.
    assert _allows(api, tenant, action) == allowed_before + (2 if operation in ("update", "rollback") else 1)


def test_a_module_registered_while_a_create_is_checked_is_checked_again(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check read the catalog without the step's module (unknown action: 422 then): the create's transaction reads
    # the catalog again, finds it changed, and the definition is checked again (outside) against the catalog as it is
    # now, which has the action. Taken as it was, the first check's outcome would refuse a valid create.
    action = f"probe-{uuid.uuid4().hex[:6]}"
    tenant = _tenant(api, "modules", ("wait", action))
    body = _body(f"probes-{uuid.uuid4().hex[:6]}")
    body["definition"]["steps"] = [{"id": "p", "action": action}]

    def register() -> None:
        registration = {"action": action, "params_schema": {"type": "object"}}
        registered = api.client.post("/api/v1/modules", json=registration, headers=api.headers(tenant, ADMIN))
        assert registered.status_code == 201, registered.text

    response, gate, completed = _while_checked(
        api, monkeypatch, lambda: api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR)), register
    )
    assert completed
    assert response.status_code == 201, response.text
    assert response.json()["definition"]["steps"][0]["action"] == action
    assert gate.calls == 2


def test_an_update_whose_item_changed_while_it_was_checked_is_refused_412(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = _tenant(api, "updates")
    name = f"raced-{uuid.uuid4().hex[:6]}"
    item_id = _created(api, tenant, _body(name))
    etag = etag_of(api, tenant, item_id)

    def update_meanwhile() -> None:
        assert _put(api, tenant, item_id, _body(name, seconds=5), etag).status_code == 200

    response, _, completed = _while_checked(
        api, monkeypatch, lambda: _put(api, tenant, item_id, _body(name, seconds=2), etag), update_meanwhile
    )
    assert completed
    assert problem(response, 412)["type"].endswith("/precondition-failed")
    current = api.client.get(f"{INTENTS}/{item_id}", headers=api.headers(tenant, AUTHOR)).json()
    assert current["version"] == 2 and current["definition"]["steps"][0]["params"]["seconds"] == 5


def test_a_create_whose_name_was_taken_while_it_was_checked_is_refused_409(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = _tenant(api, "names")
    name = f"taken-{uuid.uuid4().hex[:6]}"

    def take_the_name() -> None:
        _created(api, tenant, _body(name, seconds=4))

    response, _, completed = _while_checked(
        api,
        monkeypatch,
        lambda: api.client.post(INTENTS, json=_body(name), headers=api.headers(tenant, AUTHOR)),
        take_the_name,
    )
    assert completed
    assert problem(response, 409)["type"].endswith("/conflict")


def test_a_plan_of_a_version_superseded_while_it_was_checked_plans_the_new_one(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = _tenant(api, "plans")
    name = f"planned-{uuid.uuid4().hex[:6]}"
    item_id = _created(api, tenant, _body(name))
    two_steps = _body(name)
    two_steps["definition"]["steps"] = [wait_step("a"), wait_step("b", depends_on=["a"])]

    def update_meanwhile() -> None:
        assert _put(api, tenant, item_id, two_steps, etag_of(api, tenant, item_id)).status_code == 200

    response, gate, completed = _while_checked(
        api,
        monkeypatch,
        lambda: api.client.post(f"{INTENTS}/{item_id}/plan", headers=api.headers(tenant, AUTHOR)),
        update_meanwhile,
    )
    assert completed
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2 and response.json()["levels"] == [["a"], ["b"]]
    assert gate.calls == 3  # the plan's first check, the update's, the plan's of version 2


def test_a_declaration_whose_blueprint_moved_while_it_was_checked_pins_the_new_version(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = _tenant(api, "declares")
    blueprint = f"bp-{uuid.uuid4().hex[:6]}"
    blueprint_body = {"name": blueprint, "definition": {"steps": [wait_step("w")]}}
    blueprint_id = _created(api, tenant, blueprint_body, BLUEPRINTS, AUTHOR)

    def new_blueprint_version() -> None:
        etag = etag_of(api, tenant, blueprint_id, BLUEPRINTS)
        headers = {**api.headers(tenant, AUTHOR), "If-Match": etag}
        moved = {"name": blueprint, "definition": {"steps": [wait_step("w", 7)]}}
        assert api.client.put(f"{BLUEPRINTS}/{blueprint_id}", json=moved, headers=headers).status_code == 200

    declaration = {
        "name": f"declared-{uuid.uuid4().hex[:6]}",
        "definition": {"target": "staging", "blueprint": blueprint},
    }
    response, gate, completed = _while_checked(
        api,
        monkeypatch,
        lambda: api.client.post(INTENTS, json=declaration, headers=api.headers(tenant, AUTHOR)),
        new_blueprint_version,
    )
    assert completed
    assert response.status_code == 201, response.text
    assert response.json()["blueprint_ref"]["version"] == 2
    assert gate.calls == 3  # the declaration's first check, the blueprint's, the declaration's against version 2
