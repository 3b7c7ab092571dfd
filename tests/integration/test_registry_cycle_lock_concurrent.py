# intent_ref: platform.registry
"""Two saves at once cannot close a cycle of intents that run each other: of the pair, one saves and the other is
refused `recursive_intent`.

Each race holds a real save open (the registry's own create or update, its version written but not committed)
while the other save is requested on another connection, until that request is blocked on the first or done; then
the first commits. Each save's cycle check read the other intent's old version: both passed and both committed, and
only the run refused the cycle. Saves whose steps run no intent, and validations, do not wait for the held save."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest

from shared.db.session import tenant_transaction
from shared.policy.facts import TenantFacts
from shared.registry import service
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_expiry_lock_order import _until_done_or_blocked
from tests.integration.test_registry_api import (
    AUTHOR,
    BLUEPRINTS,
    INTENTS,
    MODULES,
    READER,
    create,
    etag_of,
    intent_body,
    problem,
    provision,
    wait_step,
)
from tests.integration.test_registry_save_cycles import _runs

pytestmark = pytest.mark.integration

Save = Callable[[Any, TenantFacts], object]
"""A save through the registry service, in a transaction the test holds open."""


def versions(api: ApiHarness, tenant: str, item: str) -> list[int]:
    """The version numbers `item` has stored."""
    response = api.client.get(f"{INTENTS}/{item}/versions", headers=api.headers(tenant, READER))
    assert response.status_code == 200, response.text
    return [version["version"] for version in response.json()["items"]]


def _named(api: ApiHarness, tenant: str, name: str) -> list[dict[str, Any]]:
    response = api.client.get(INTENTS, params={"name_prefix": name}, headers=api.headers(tenant, READER))
    assert response.status_code == 200, response.text
    return [item for item in response.json()["items"] if item["name"] == name]


def while_held(
    api: ApiHarness, tenant: str, hold: Callable[[Any], object], request: Callable[[], Any]
) -> tuple[Any, bool]:
    """`request()`'s response, sent on another connection while `hold(conn)` is written in a transaction not yet
    committed, and whether it was answered before that commit; the transaction commits once the request waits for
    it (or is done)."""
    answers: list[Any] = []
    failures: list[BaseException] = []

    def send() -> None:
        try:
            answers.append(request())
        except BaseException as exc:  # reported below: an exception in a thread would otherwise pass unseen
            failures.append(exc)

    with tenant_transaction(api.tenants[tenant].id) as conn:
        hold(conn)
        sender = threading.Thread(target=send)
        sender.start()
        _until_done_or_blocked(api.admin_url, sender, conn.info.backend_pid, timeout_s=60)
        answered_first = not sender.is_alive()
    sender.join(60)
    assert not sender.is_alive() and not failures, failures
    return answers[0], answered_first


def _while_saving(api: ApiHarness, tenant: str, save: Save, request: Callable[[], Any]) -> tuple[Any, bool]:
    """`request()`'s response, sent while `save` is written but not committed, and whether it was answered before
    that commit."""
    facts = TenantFacts(api.tenants[tenant].id, "active", frozenset({"staging", "production"}), frozenset(MODULES))
    return while_held(api, tenant, lambda conn: save(conn, facts), request)


def _update(item: str, body: dict[str, Any]) -> Save:
    def save(conn: Any, facts: TenantFacts) -> object:
        return service.update(conn, "intent", UUID(item), body, if_match=None, tenant=facts, created_by="author")

    return save


def _create(body: dict[str, Any]) -> Save:
    def save(conn: Any, facts: TenantFacts) -> object:
        return service.create(conn, "intent", body, item_id=uuid.uuid4(), tenant=facts, created_by="author")

    return save


def _refused_at(response: Any) -> list[tuple[str, str]]:
    return [(error["pointer"], error["code"]) for error in problem(response, 422)["errors"]]


def test_two_updates_closing_a_cycle_at_once_save_one(api: ApiHarness) -> None:
    tenant = provision(api, "cycle-lock-updates")
    ping = create(api, tenant, intent_body("ping", wait_step("w")))["id"]
    pong = create(api, tenant, intent_body("pong", wait_step("w")))["id"]
    headers = {**api.headers(tenant, AUTHOR), "If-Match": etag_of(api, tenant, pong)}

    def update_pong() -> Any:
        return api.client.put(f"{INTENTS}/{pong}", json=intent_body("pong", _runs("back", "ping")), headers=headers)

    answer, _ = _while_saving(api, tenant, _update(ping, intent_body("ping", _runs("go", "pong"))), update_pong)
    assert _refused_at(answer) == [("/definition/steps/0/intent", "recursive_intent")]
    assert "'pong' → 'ping' → 'pong'" in answer.json()["errors"][0]["detail"]
    assert sorted(versions(api, tenant, ping)) == [1, 2]
    assert versions(api, tenant, pong) == [1]


def test_two_creates_closing_a_cycle_at_once_save_one(api: ApiHarness) -> None:
    tenant = provision(api, "cycle-lock-creates")

    def create_pong() -> Any:
        body = intent_body("pong", _runs("back", "ping"))
        return api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR))

    # ping runs pong, which does not exist yet: its own walk finds nothing to follow.
    answer, _ = _while_saving(api, tenant, _create(intent_body("ping", _runs("go", "pong"))), create_pong)
    assert _refused_at(answer) == [("/definition/steps/0/intent", "recursive_intent")]
    assert len(_named(api, tenant, "ping")) == 1
    assert _named(api, tenant, "pong") == []


def test_a_declaration_closing_a_cycle_with_an_update_at_once_is_refused(api: ApiHarness) -> None:
    """A declaration's steps are its blueprint's: one that runs an intent takes its turn as any such save."""
    tenant = provision(api, "cycle-lock-declared")
    blueprint = {"name": "runner", "definition": {"steps": [_runs("s", "relay")]}}
    create(api, tenant, blueprint, BLUEPRINTS)
    relay = create(api, tenant, intent_body("relay", wait_step("w")))["id"]
    declaration = {"name": "declared", "definition": {"target": "staging", "blueprint": "runner"}}

    def declare() -> Any:
        return api.client.post(INTENTS, json=declaration, headers=api.headers(tenant, AUTHOR))

    answer, _ = _while_saving(api, tenant, _update(relay, intent_body("relay", _runs("s", "declared"))), declare)
    assert _refused_at(answer) == [("/definition/blueprint", "recursive_intent")]
    assert _named(api, tenant, "declared") == []
    assert sorted(versions(api, tenant, relay)) == [1, 2]


def _answered_while_saving(api: ApiHarness, tenant: str, save: Save, request: Callable[[], Any], status: int) -> None:
    """`request()` is answered `status` while `save` is written but not committed: it did not wait for the save."""
    answer, answered_first = _while_saving(api, tenant, save, request)
    assert answer.status_code == status, answer.text
    assert answered_first


def test_saves_running_no_intent_and_validations_do_not_wait_for_a_save_that_runs_one(api: ApiHarness) -> None:
    tenant = provision(api, "cycle-lock-others")
    ping = create(api, tenant, intent_body("ping", wait_step("w")))["id"]
    plain = create(api, tenant, intent_body("plain", wait_step("w")))["id"]
    headers = {**api.headers(tenant, AUTHOR), "If-Match": etag_of(api, tenant, plain)}
    holding = _update(ping, intent_body("ping", _runs("go", "pong")))

    def update_plain() -> Any:
        return api.client.put(f"{INTENTS}/{plain}", json=intent_body("plain", wait_step("w2")), headers=headers)

    _answered_while_saving(api, tenant, holding, update_plain, 200)

    def create_plain() -> Any:
        body = intent_body("pong", wait_step("w"))
        return api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR))

    _answered_while_saving(api, tenant, _update(plain, intent_body("plain", _runs("s", "ping"))), create_plain, 201)

    def validate() -> Any:
        body = intent_body("other", _runs("s", "ping"))
        return api.client.post(f"{INTENTS}/validate", json=body, headers=api.headers(tenant, AUTHOR))

    _answered_while_saving(api, tenant, _update(plain, intent_body("plain", _runs("t", "ping"))), validate, 200)

    # And the other way round: a save running no intent holds no turn that a save running one would wait for.
    def create_running() -> Any:
        body = intent_body("other", _runs("s", "ping"))
        return api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR))

    _answered_while_saving(api, tenant, _update(plain, intent_body("plain", wait_step("w3"))), create_running, 201)


def test_a_validation_of_a_declaration_does_not_wait_for_an_update_of_its_blueprint(api: ApiHarness) -> None:
    """A validation writes no version, so it holds no share of its blueprint: it took one, and so waited for an
    update (or archive) of the blueprint in flight, and made those wait for it."""
    tenant = provision(api, "validate-blueprint-held")
    blueprint = create(api, tenant, {"name": "plain", "definition": {"steps": [wait_step("w")]}}, BLUEPRINTS)["id"]
    facts = TenantFacts(api.tenants[tenant].id, "active", frozenset({"staging", "production"}), frozenset(MODULES))

    def update_blueprint(conn: Any) -> object:
        body = {"name": "plain", "definition": {"steps": [wait_step("w2")]}}
        return service.update(conn, "blueprint", UUID(blueprint), body, if_match=None, tenant=facts, created_by="a")

    def validate() -> Any:
        declaration = {"name": "declared", "definition": {"target": "staging", "blueprint": "plain"}}
        return api.client.post(f"{INTENTS}/validate", json=declaration, headers=api.headers(tenant, AUTHOR))

    answer, answered_first = while_held(api, tenant, update_blueprint, validate)
    assert answer.status_code == 200, answer.text
    assert answered_first
