# intent_ref: platform.registry
"""Intents that run each other are refused at save (validate, create, update), not only when they run.

An intent.run step naming the intent being saved was refused at save; one whose intent comes back round through
others saved, and only its run was refused (by the engine, at the intent already running above). The save walks
the tenant's intents as a run would start them now (the version a step pins, else the current one; a declaration
through its pinned blueprint), within a bound of intents read and names looked up. Stored versions are not checked
again: a cycle saved before still plans."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from shared.db.session import tenant_transaction
from shared.policy.facts import TenantFacts
from shared.registry import repository, service
from shared.registry.catalog import IntentRunParams
from shared.registry.model import Step
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import (
    AUTHOR,
    BLUEPRINTS,
    DEPLOYER,
    INTENTS,
    MODULES,
    create,
    intent_body,
    problem,
    provision,
    put,
    registry_tables,
    wait_step,
)

pytestmark = pytest.mark.integration


def _runs(step_id: str, intent: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "intent.run", "intent": intent, **extra}


def _refusals(response: Any) -> list[tuple[str, str, str]]:
    return [(e["pointer"], e["code"], e["detail"]) for e in problem(response, 422)["errors"]]


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the intents whose stored steps a save's cycle check reads from here on, in order."""
    seen: list[str] = []
    original: Callable[[Any, service.Item], tuple[Step, ...]] = service._steps_of

    def counting(conn: Any, item: service.Item) -> tuple[Step, ...]:
        seen.append(item.head.name)
        return original(conn, item)

    monkeypatch.setattr(service, "_steps_of", counting)
    return seen


def test_two_intents_that_run_each_other_are_refused_at_validate_and_create(api: ApiHarness) -> None:
    tenant = provision(api, "cycle-two")
    create(api, tenant, intent_body("ping", wait_step("first"), _runs("go", "pong")))  # pong does not exist yet
    pong = intent_body("pong", wait_step("first"), _runs("back", "ping"))
    before = registry_tables(api)
    for path in (f"{INTENTS}/validate", INTENTS):
        ((at, code, detail),) = _refusals(api.client.post(path, json=pong, headers=api.headers(tenant, AUTHOR)))
        assert (at, code) == ("/definition/steps/1/intent", "recursive_intent")
        assert "'pong' → 'ping' → 'pong'" in detail, detail
    assert registry_tables(api) == before


def test_a_cycle_through_three_intents_is_refused_at_update_where_it_closes(api: ApiHarness) -> None:
    tenant = provision(api, "cycle-three")
    create(api, tenant, intent_body("one", _runs("s", "two")))
    create(api, tenant, intent_body("two", wait_step("w"), _runs("s", "three")))
    three = create(api, tenant, intent_body("three", wait_step("w")))["id"]
    closing = intent_body("three", wait_step("w"), {"id": "s", "action": "intent.run", "params": {"intent": "one"}})
    before = registry_tables(api)
    ((at, code, detail),) = _refusals(put(api, tenant, three, closing))
    assert (at, code) == ("/definition/steps/1/params/intent", "recursive_intent")
    assert "'three' → 'one' → 'two' → 'three'" in detail, detail
    assert registry_tables(api) == before
    # A tree that does not come back round saves: the same intents run below several steps (a diamond).
    shared = intent_body("three", _runs("a", "leaf"), _runs("b", "leaf"), _runs("c", "twin"))
    create(api, tenant, intent_body("leaf"))
    create(api, tenant, intent_body("twin", _runs("s", "leaf")))
    assert put(api, tenant, three, shared).status_code == 200


def test_a_cycle_is_followed_through_the_version_a_step_pins(api: ApiHarness) -> None:
    tenant = provision(api, "cycle-pinned")
    middle = create(api, tenant, intent_body("middle", _runs("s", "start")))["id"]
    assert put(api, tenant, middle, intent_body("middle", wait_step("w"))).status_code == 200  # current: no cycle
    create(api, tenant, intent_body("outer", _runs("s", "middle", version=1)))
    ((at, code, detail),) = _refusals(
        api.client.post(INTENTS, json=intent_body("start", _runs("s", "outer")), headers=api.headers(tenant, AUTHOR))
    )
    assert (at, code) == ("/definition/steps/0/intent", "recursive_intent")
    assert "'start' → 'outer' → 'middle' → 'start'" in detail, detail
    # Pinned to the version without the cycle, the same chain saves.
    create(api, tenant, intent_body("outer-2", _runs("s", "middle", version=2)))
    assert (
        api.client.post(
            INTENTS, json=intent_body("start", _runs("s", "outer-2")), headers=api.headers(tenant, AUTHOR)
        ).status_code
        == 201
    )


def test_a_declaration_whose_blueprint_comes_back_round_is_refused(api: ApiHarness) -> None:
    tenant = provision(api, "cycle-declared")
    blueprint = {"name": "runner", "definition": {"steps": [{"id": "s", "action": "intent.run", "intent": "relay"}]}}
    create(api, tenant, blueprint, BLUEPRINTS)
    relay = create(api, tenant, intent_body("relay", _runs("s", "declared")))["id"]
    declaration = {"name": "declared", "definition": {"target": "staging", "blueprint": "runner"}}
    ((at, code, detail),) = _refusals(
        api.client.post(f"{INTENTS}/validate", json=declaration, headers=api.headers(tenant, AUTHOR))
    )
    assert (at, code) == ("/definition/blueprint", "recursive_intent")
    assert "blueprint step 's'" in detail and "'declared' → 'relay' → 'declared'" in detail, detail
    # And the other way round: an intent running a declaration whose blueprint runs it.
    create(api, tenant, {"name": "declared-2", "definition": {"target": "staging", "blueprint": "runner"}})
    ((at, code, detail),) = _refusals(put(api, tenant, relay, intent_body("relay", _runs("s", "declared-2"))))
    assert (at, code) == ("/definition/steps/0/intent", "recursive_intent")
    assert "'relay' → 'declared-2' → 'relay'" in detail, detail


def test_intents_of_another_tenant_are_not_read(api: ApiHarness) -> None:
    mine, theirs = provision(api, "cycle-mine"), provision(api, "cycle-theirs")
    create(api, theirs, intent_body("back", _runs("s", "away")))
    response = api.client.post(INTENTS, json=intent_body("away", _runs("s", "back")), headers=api.headers(mine, AUTHOR))
    assert response.status_code == 201, response.text


def test_the_walk_reads_at_most_its_bound_of_intents(api: ApiHarness, reads: list[str]) -> None:
    """A chain longer than the bound: the save reads the steps of MAX_CYCLE_INTENTS intents, no more, and is not
    refused for the cycle it did not reach (the engine refuses it when it runs)."""
    tenant = provision(api, "cycle-bound")
    length = service.MAX_CYCLE_INTENTS + 4
    for index in range(length, 0, -1):
        create(
            api, tenant, intent_body(f"link-{index}", _runs("s", "head" if index == length else f"link-{index + 1}"))
        )
    reads.clear()
    created = api.client.post(
        INTENTS, json=intent_body("head", _runs("s", "link-1")), headers=api.headers(tenant, AUTHOR)
    )
    assert created.status_code == 201, created.text
    assert reads == [f"link-{index}" for index in range(1, service.MAX_CYCLE_INTENTS + 1)]


def test_the_walk_looks_up_at_most_its_bound_of_names(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = provision(api, "cycle-lookups")
    looked: list[str] = []
    original = service._cycle_lookup

    def counting(conn: Any, params: IntentRunParams) -> Any:
        looked.append(params.intent)
        return original(conn, params)

    half = service.MAX_CYCLE_LOOKUPS // 2 + 10  # two intents, each under the step limit, past the bound together
    for side in ("a", "b"):
        missing = [_runs(f"s{index}", f"missing-{side}-{index}", depends_on=[]) for index in range(half)]
        create(api, tenant, intent_body(f"wide-{side}", *missing))
    monkeypatch.setattr(service, "_cycle_lookup", counting)
    top = intent_body("top", _runs("a", "wide-a"), _runs("b", "wide-b"))
    created = api.client.post(INTENTS, json=top, headers=api.headers(tenant, AUTHOR))
    assert created.status_code == 201, created.text
    assert len(looked) == service.MAX_CYCLE_LOOKUPS


def test_a_cycle_stored_before_the_check_still_plans(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = provision(api, "cycle-stored")
    with monkeypatch.context() as patched:  # as they were saved before
        patched.setattr(service, "_cycle_problems", lambda *_args, **_kwargs: [])
        ping = create(api, tenant, intent_body("ping", wait_step("w"), _runs("s", "pong")))["id"]
        create(api, tenant, intent_body("pong", wait_step("w"), _runs("s", "ping")))
    planned = api.client.post(f"{INTENTS}/{ping}/plan", headers=api.headers(tenant, DEPLOYER))
    assert planned.status_code == 200, planned.text
    rolled = api.client.post(f"{INTENTS}/{ping}/rollback", json={"to_version": 1}, headers=api.headers(tenant, AUTHOR))
    assert rolled.status_code == 200, rolled.text
    # A change of the stored cycle is a save: refused until it no longer comes round.
    changed = copy.deepcopy(intent_body("ping", wait_step("w2"), _runs("s", "pong")))
    assert [code for _, code, _ in _refusals(put(api, tenant, ping, changed))] == ["recursive_intent"]
    assert put(api, tenant, ping, intent_body("ping", wait_step("w2"))).status_code == 200


def test_the_walk_reads_the_definitions_of_the_intents_it_follows_only(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each look-up read its intent's current version and the one its step pins, definitions and all (400 for 200
    steps pinning version 1 of intents at version 2), and kept them for the whole walk; only the intents followed
    need their steps read."""
    tenant = provision(api, "cycle-definitions")
    count = 200
    facts = TenantFacts(api.tenants[tenant].id, "active", frozenset({"staging", "production"}), frozenset(MODULES))
    with tenant_transaction(api.tenants[tenant].id) as conn:  # one transaction: 400 requests would be slow
        for index in range(count):
            made = service.create(
                conn, "intent", intent_body(f"pinned-{index}"), item_id=uuid.uuid4(), tenant=facts, created_by="a"
            )
            body = intent_body(f"pinned-{index}", wait_step("two"))
            service.update(conn, "intent", made.head.id, body, if_match=None, tenant=facts, created_by="a")
    loaded: list[int] = []
    original = repository.get_version

    def counting(conn: Any, kind: repository.Kind, item_id: Any, version: int) -> repository.VersionRow | None:
        found = original(conn, kind, item_id, version)
        loaded.append(version)
        return found

    monkeypatch.setattr(service, "get_version", counting)
    steps = [_runs(f"s{index}", f"pinned-{index}", version=1, depends_on=[]) for index in range(count)]
    created = api.client.post(INTENTS, json=intent_body("top", *steps), headers=api.headers(tenant, AUTHOR))
    assert created.status_code == 201, created.text
    walked = len(loaded) - 1  # the create's answer reads the new version once
    assert 0 < walked <= service.MAX_CYCLE_INTENTS, walked


class _Recording:
    """A connection that records each statement and its parameters before running it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements: list[tuple[Any, Any]] = []

    def execute(self, query: Any, params: Any = None) -> Any:
        self.statements.append((query, params))
        return self.conn.execute(query, params)


def _index_conditions(node: Any) -> list[str]:
    found = [node["Index Cond"]] if "Index Cond" in node else []
    for child in node.get("Plans", []):
        found.extend(_index_conditions(child))
    return found


def test_a_look_up_by_name_finds_the_name_in_the_index(api: ApiHarness) -> None:
    """A look-up by name took the name as a prefix test, a filter only: the index was walked from the first of the
    tenant's names to the one wanted."""
    tenant = provision(api, "cycle-find-head")
    for name in ("alpha", "beta", "gamma"):
        create(api, tenant, intent_body(name))
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute("ANALYZE app.intents")  # the planner's statistics as a long-lived table's are
    with tenant_transaction(api.tenants[tenant].id) as conn:
        conn.execute("SET LOCAL enable_seqscan = off")  # a small table: the plan a large one gets
        recording = _Recording(conn)
        head = repository.find_head(recording, "intent", "gamma")  # type: ignore[arg-type]
        assert head is not None and head.name == "gamma"
        assert repository.find_head(recording, "intent", "gam") is None  # type: ignore[arg-type]
        for query, params in recording.statements:
            explained = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query, params).fetchone()
            assert explained is not None
            plan = next(iter(explained.values()))[0]["Plan"]
            assert any("name =" in condition for condition in _index_conditions(plan)), json.dumps(plan)


def test_a_taken_name_and_a_rename_are_answered_before_the_walk(api: ApiHarness) -> None:
    """The walk ran first and answered recursive_intent for a save refused anyway: a create of a name an archived
    intent keeps (409), an update that renames its intent (name_immutable)."""
    tenant = provision(api, "cycle-names-first")
    author = api.headers(tenant, AUTHOR)
    kept = create(api, tenant, intent_body("kept"))["id"]
    assert api.client.delete(f"{INTENTS}/{kept}", headers=author).status_code == 200
    create(api, tenant, intent_body("caller", _runs("s", "kept")))
    taken = api.client.post(INTENTS, json=intent_body("kept", _runs("s", "caller")), headers=author)
    assert problem(taken, 409)["title"], taken.text
    other = create(api, tenant, intent_body("other"))["id"]
    create(api, tenant, intent_body("renamed-caller", _runs("s", "renamed")))
    renamed = put(api, tenant, other, intent_body("renamed", _runs("s", "renamed-caller")))
    assert [(at, code) for at, code, _ in _refusals(renamed)] == [("/name", "name_immutable")]
