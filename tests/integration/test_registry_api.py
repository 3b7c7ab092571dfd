# intent_ref: platform.registry
"""The intent and blueprint registry through the API: versions, rollback, concurrency, diff, plan, isolation, ABAC.

Every refused request is checked to have changed nothing.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import psycopg
import pytest

from shared.registry import service
from shared.registry.catalog import seed_remote_modules
from shared.registry.modules import ModuleRegistration
from shared.registry.plan import plan_hash
from shared.registry.validation import validate_definition
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.unit.test_registry_model import SEED_DECLARATION, SEED_DEPLOY_WEB_APP, SEED_REGISTRY_EXAMPLE
from tests.unit.test_registry_validation import BLUEPRINT, CATALOG

pytestmark = pytest.mark.integration

AUTHOR, READER, EXECUTOR, DEPLOYER = ["Intent.Author"], ["Intent.Reader"], ["Intent.Executor"], ["Intent.Deployer"]
ADMIN = ["Tenant.Admin"]
MODULES = [
    "http",
    "wait",
    "event",
    "artifact",
    "approval",
    "intent",
    "verify-deployment",
    "build-container",
    "build-docker-image",
    "push-to-registry",
    "deploy-to-kubernetes",
]
ROOMY = {"requests_per_minute": 100_000, "burst": 10_000}
INTENTS = "/api/v1/intents"
BLUEPRINTS = "/api/v1/blueprints"
SEED_BLUEPRINT: dict[str, Any] = {
    "name": "deploy-application",
    "description": "The seed tutorial's blueprint.",
    "definition": BLUEPRINT.definition.to_document(),
}


def provision(api: ApiHarness, name: str, **kwargs: Any) -> str:
    """A tenant with the seed's remote modules registered (as `make run` seeds them); returns its handle name."""
    kwargs.setdefault("allowed_modules", MODULES)
    kwargs.setdefault("quotas", ROOMY)
    api.provision(name, **kwargs)
    for spec in seed_remote_modules():
        body = ModuleRegistration.from_spec(spec).model_dump(mode="json")
        response = api.client.post("/api/v1/modules", json=body, headers=api.headers(name, ADMIN))
        assert response.status_code == 201, response.text
    return name


def wait_step(step_id: str, seconds: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "wait", "seconds": seconds, **extra}


def intent_body(name: str, *steps: dict[str, Any], target: str = "staging", **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields, "definition": {"target": target, "steps": list(steps or [wait_step("only")])}}


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def create(api: ApiHarness, tenant: str, body: dict[str, Any], path: str = INTENTS) -> dict[str, Any]:
    response = api.client.post(path, json=body, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert response.headers["location"] == f"{path}/{created['id']}"
    assert response.headers["etag"] == f'"{created["id"]}.v{created["version"]}"'
    return created


def etag_of(api: ApiHarness, tenant: str, item_id: str, path: str = INTENTS) -> str:
    response = api.client.get(f"{path}/{item_id}", headers=api.headers(tenant, READER))
    assert response.status_code == 200, response.text
    return str(response.headers["etag"])


def put(
    api: ApiHarness,
    tenant: str,
    item_id: str,
    body: dict[str, Any],
    *,
    etag: str | None = None,
    roles: list[str] = AUTHOR,
) -> Any:
    headers = api.headers(tenant, roles)
    headers["If-Match"] = etag if etag is not None else etag_of(api, tenant, item_id)
    return api.client.put(f"{INTENTS}/{item_id}", json=body, headers=headers)


def normalized(body: dict[str, Any]) -> dict[str, Any]:
    result = validate_definition(copy.deepcopy(body), catalog=CATALOG)
    assert result.ok, result.errors
    assert result.normalized is not None
    return result.normalized


def outbox(api: ApiHarness, tenant: str) -> list[dict[str, Any]]:
    with psycopg.connect(api.admin_url, dbname="quantum", row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT event_type, subject, data FROM app.outbox WHERE tenant_id = %s ORDER BY position",
            (api.tenants[tenant].id,),
        ).fetchall()


def registry_tables(api: ApiHarness) -> tuple[Any, ...]:
    """Everything a registry change touches, to prove a refused request changed nothing."""
    return tuple(api.table_snapshot(table) for table in ("intents", "intent_versions", "outbox", "idempotency_keys"))


# ---- the seed tutorial ---------------------------------------------------------------------------------------


def test_seed_payloads_are_accepted_as_written(api: ApiHarness) -> None:
    provision(api, "seed")
    provision(api, "seed-registry")
    web = create(api, "seed", copy.deepcopy(SEED_DEPLOY_WEB_APP))
    assert web["definition"] == normalized(SEED_DEPLOY_WEB_APP)
    assert [step["id"] for step in web["definition"]["steps"]] == [
        "build-docker-image",
        "push-to-registry",
        "deploy-to-kubernetes",
    ]
    # The registry example echoes read-only fields (id, version, tenant_id, status, created_at): ignored.
    example = create(api, "seed-registry", copy.deepcopy(SEED_REGISTRY_EXAMPLE))
    assert example["version"] == 1 and example["status"] == "active" and example["id"] != "deploy-application-v1"
    assert example["definition"] == normalized(SEED_REGISTRY_EXAMPLE)

    # The declaration needs its blueprint; without it, the save names what is missing.
    body = problem(
        api.client.post(INTENTS, json=copy.deepcopy(SEED_DECLARATION), headers=api.headers("seed", AUTHOR)), 422
    )
    assert [(e["pointer"], e["code"]) for e in body["errors"]] == [("/definition", "blueprint_required")]
    blueprint = create(api, "seed", copy.deepcopy(SEED_BLUEPRINT), BLUEPRINTS)
    declaration = create(api, "seed", copy.deepcopy(SEED_DECLARATION))
    assert declaration["definition"] == SEED_DECLARATION["definition"]
    assert declaration["blueprint_ref"] == {"id": blueprint["id"], "name": "deploy-application", "version": 1}

    plan = api.client.post(f"{INTENTS}/{declaration['id']}/plan", headers=api.headers("seed", DEPLOYER)).json()
    assert plan["levels"] == [["build"], ["deploy"], ["verify"]]
    assert plan["blueprint_ref"] == "deploy-application@1"
    assert [step["action"] for step in plan["steps"]] == [
        "build-container",
        "deploy-to-kubernetes",
        "verify-deployment",
    ]
    assert plan["plan_hash"] == plan_hash(SEED_DECLARATION["definition"], "deploy-application@1")


def test_a_declaration_keeps_its_pinned_blueprint_version_until_it_is_updated(api: ApiHarness) -> None:
    tenant = provision(api, "pins")
    blueprint = create(api, tenant, copy.deepcopy(SEED_BLUEPRINT), BLUEPRINTS)
    declaration = create(api, tenant, copy.deepcopy(SEED_DECLARATION))
    changed = copy.deepcopy(SEED_BLUEPRINT)
    changed["definition"]["steps"].append({"id": "announce", "action": "event.emit", "type": "deployed"})
    headers = {**api.headers(tenant, AUTHOR), "If-Match": etag_of(api, tenant, blueprint["id"], BLUEPRINTS)}
    assert api.client.put(f"{BLUEPRINTS}/{blueprint['id']}", json=changed, headers=headers).status_code == 200

    plan = api.client.post(f"{INTENTS}/{declaration['id']}/plan", headers=api.headers(tenant, DEPLOYER)).json()
    assert plan["blueprint_ref"] == "deploy-application@1" and plan["levels"][-1] == ["verify"]
    # A blueprint plans too, without execute decisions: it only runs through the intents that declare it.
    own = api.client.post(f"{BLUEPRINTS}/{blueprint['id']}/plan", headers=api.headers(tenant, READER)).json()
    assert own["levels"][-1] == ["announce"] and own["caller_may_execute"] is None
    assert {step["authorization"] for step in own["steps"]} == {None}
    updated = put(api, tenant, declaration["id"], copy.deepcopy(SEED_DECLARATION))
    assert updated.json()["blueprint_ref"]["version"] == 2
    plan = api.client.post(f"{INTENTS}/{declaration['id']}/plan", headers=api.headers(tenant, DEPLOYER)).json()
    assert plan["blueprint_ref"] == "deploy-application@2" and plan["levels"][-1] == ["announce"]


def test_a_blueprint_is_not_a_declaration(api: ApiHarness) -> None:
    tenant = provision(api, "bp-rules")
    before = registry_tables(api)
    response = api.client.post(
        BLUEPRINTS,
        json={"name": "x", "definition": {"target": "staging", "version": "1"}},
        headers=api.headers(tenant, AUTHOR),
    )
    assert [(e["pointer"], e["code"]) for e in problem(response, 422)["errors"]] == [
        ("/definition/steps", "steps_required")
    ]
    assert registry_tables(api) == before


# ---- versions --------------------------------------------------------------------------------------------------


def test_create_update_rollback_update_history(api: ApiHarness) -> None:
    tenant = provision(api, "history")
    v1_body = intent_body("history", wait_step("a"), wait_step("b"), labels={"team": "web"}, description="one")
    created = create(api, tenant, v1_body)
    item = created["id"]
    v2_body = intent_body("history", wait_step("a", 5), labels={"team": "api"}, description="two")
    v2 = put(api, tenant, item, v2_body)
    assert v2.status_code == 200 and v2.json()["version"] == 2 and v2.headers["etag"] == f'"{item}.v2"'
    rolled = api.client.post(f"{INTENTS}/{item}/rollback", json={"to_version": 1}, headers=api.headers(tenant, AUTHOR))
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == 3
    assert rolled.json()["origin"] == {"kind": "rollback", "from_version": 1}
    assert (rolled.json()["definition"], rolled.json()["labels"], rolled.json()["description"]) == (
        created["definition"],
        {"team": "web"},
        "one",
    )
    before = registry_tables(api)
    unknown = problem(
        api.client.post(f"{INTENTS}/{item}/rollback", json={"to_version": 9}, headers=api.headers(tenant, AUTHOR)), 422
    )
    assert [(e["pointer"], e["code"]) for e in unknown["errors"]] == [("/to_version", "unknown_version")]
    stale = {**api.headers(tenant, AUTHOR), "If-Match": f'"{item}.v2"'}
    problem(api.client.post(f"{INTENTS}/{item}/rollback", json={"to_version": 1}, headers=stale), 412)
    assert registry_tables(api) == before
    v4 = put(api, tenant, item, intent_body("history", wait_step("c"), description="four"))
    assert v4.json()["version"] == 4

    versions = api.client.get(f"{INTENTS}/{item}/versions", headers=api.headers(tenant, READER)).json()
    assert [(v["version"], v["origin"]) for v in versions["items"]] == [
        (1, {"kind": "create"}),
        (2, {"kind": "update", "from_version": 1}),
        (3, {"kind": "rollback", "from_version": 1}),
        (4, {"kind": "update", "from_version": 3}),
    ]
    assert versions["items"][2]["definition"] == versions["items"][0]["definition"]
    assert versions["items"][2]["definition_sha256"] == versions["items"][0]["definition_sha256"]
    assert versions["next_cursor"] is None
    first = api.client.get(f"{INTENTS}/{item}/versions?limit=3", headers=api.headers(tenant, READER)).json()
    rest = api.client.get(
        f"{INTENTS}/{item}/versions?limit=3&cursor={first['next_cursor']}", headers=api.headers(tenant, READER)
    ).json()
    assert [v["version"] for v in first["items"] + rest["items"]] == [1, 2, 3, 4] and rest["next_cursor"] is None
    two = api.client.get(f"{INTENTS}/{item}/versions/2", headers=api.headers(tenant, READER)).json()
    assert two["definition"] == normalized(v2_body) and two["labels"] == {"team": "api"}
    problem(api.client.get(f"{INTENTS}/{item}/versions/9", headers=api.headers(tenant, READER)), 404)
    current = api.client.get(f"{INTENTS}/{item}", headers=api.headers(tenant, READER)).json()
    assert current["version"] == 4 and current["description"] == "four" and current["labels"] == {}

    events = [(e["event_type"], e["data"]["version"]) for e in outbox(api, tenant) if e["data"]["id"] == item]
    assert events == [
        ("intent.created", 1),
        ("intent.version_created", 2),
        ("intent.rolled_back", 3),
        ("intent.version_created", 4),
    ]
    assert all(e["subject"] == f"intents/{item}" for e in outbox(api, tenant))
    mutations = [
        (row["action"], row["detail"].get("version"))
        for row in api.audit_rows(tenant)
        if row["reason"] == "applied" and row["resource_id"] == item
    ]
    assert mutations == [("intent.create", 1), ("intent.update", 2), ("intent.rollback", 3), ("intent.update", 4)]


def test_update_needs_the_current_etag(api: ApiHarness) -> None:
    tenant = provision(api, "etags")
    item = create(api, tenant, intent_body("etags"))["id"]
    stale = etag_of(api, tenant, item)
    assert put(api, tenant, item, intent_body("etags", wait_step("x")), etag=stale).status_code == 200
    before = registry_tables(api)
    headers = api.headers(tenant, AUTHOR)
    problem(api.client.put(f"{INTENTS}/{item}", json=intent_body("etags"), headers=headers), 428)
    problem(put(api, tenant, item, intent_body("etags"), etag=stale), 412)
    problem(put(api, tenant, item, intent_body("etags"), etag=f"W/{etag_of(api, tenant, item)}"), 412)
    # A rename would repoint declarations and clients that find the intent by name.
    body = problem(put(api, tenant, item, intent_body("renamed")), 422)
    assert [(e["pointer"], e["code"]) for e in body["errors"]] == [("/name", "name_immutable")]
    assert registry_tables(api) == before
    # A GET's body can be sent back as it is: the read-only fields are ignored.
    current = api.client.get(f"{INTENTS}/{item}", headers=api.headers(tenant, READER)).json()
    assert put(api, tenant, item, current).json()["version"] == 3


def test_two_concurrent_updates_with_one_etag_exactly_one_wins(api: ApiHarness) -> None:
    tenant = provision(api, "race")
    item = create(api, tenant, intent_body("race"))["id"]
    etag = etag_of(api, tenant, item)
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def update(step: str) -> None:
        barrier.wait()
        results[step] = put(api, tenant, item, intent_body("race", wait_step(step)), etag=etag)

    threads = [threading.Thread(target=update, args=(step,)) for step in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(response.status_code for response in results.values()) == [200, 412]
    winner = next(step for step, response in results.items() if response.status_code == 200)
    versions = api.client.get(f"{INTENTS}/{item}/versions", headers=api.headers(tenant, READER)).json()["items"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["definition"]["steps"][0]["id"] == winner
    assert [e["event_type"] for e in outbox(api, tenant)] == ["intent.created", "intent.version_created"]


def test_archived_intents_keep_their_versions_and_refuse_changes(api: ApiHarness) -> None:
    tenant = provision(api, "archive")
    item = create(api, tenant, intent_body("archive"))["id"]
    stale = {**api.headers(tenant, AUTHOR), "If-Match": etag_of(api, tenant, item)}
    put(api, tenant, item, intent_body("archive", wait_step("two")))
    before = registry_tables(api)
    problem(api.client.delete(f"{INTENTS}/{item}", headers=stale), 412)
    assert registry_tables(api) == before
    archived = api.client.delete(f"{INTENTS}/{item}", headers=api.headers(tenant, AUTHOR))
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    assert archived.json()["archived_at"] is not None and archived.json()["version"] == 2

    reader = api.headers(tenant, READER)
    assert api.client.get(f"{INTENTS}/{item}", headers=reader).json()["status"] == "archived"
    assert len(api.client.get(f"{INTENTS}/{item}/versions", headers=reader).json()["items"]) == 2
    assert api.client.get(f"{INTENTS}/{item}/diff?from=1&to=2", headers=reader).status_code == 200
    plan = api.client.post(f"{INTENTS}/{item}/plan", headers=api.headers(tenant, DEPLOYER)).json()
    assert plan["status"] == "archived" and plan["caller_may_execute"] is False

    before = registry_tables(api)
    assert problem(put(api, tenant, item, intent_body("archive", wait_step("three"))), 409)["type"].endswith(
        "/archived"
    )
    problem(
        api.client.post(f"{INTENTS}/{item}/rollback", json={"to_version": 1}, headers=api.headers(tenant, AUTHOR)), 409
    )
    again = api.client.delete(f"{INTENTS}/{item}", headers=api.headers(tenant, AUTHOR))
    assert again.status_code == 200 and again.json()["status"] == "archived"
    assert registry_tables(api) == before
    assert [e["event_type"] for e in outbox(api, tenant)].count("intent.archived") == 1
    # The name stays taken: archived intents are history, not free slots.
    taken = problem(api.client.post(INTENTS, json=intent_body("archive"), headers=api.headers(tenant, AUTHOR)), 409)
    assert taken["detail"] == "An intent named 'archive' exists (archived ones keep their name)."


# ---- diff, validate, plan --------------------------------------------------------------------------------------


def test_diff_of_a_known_pair(api: ApiHarness) -> None:
    tenant = provision(api, "diff")
    item = create(
        api, tenant, intent_body("diff", wait_step("a"), wait_step("b"), wait_step("gone"), labels={"team": "web"})
    )["id"]
    put(
        api,
        tenant,
        item,
        intent_body("diff", wait_step("a"), wait_step("b", 5), wait_step("c"), labels={"team": "api"}),
    )
    diff = api.client.get(f"{INTENTS}/{item}/diff?from=1&to=2", headers=api.headers(tenant, READER)).json()
    assert diff["steps_added"] == ["c"] and diff["steps_removed"] == ["gone"]
    assert diff["steps_changed"] == [
        {"id": "b", "changes": [{"path": "/params/seconds", "kind": "changed", "old": 1, "new": 5}]}
    ]
    assert diff["metadata_changed"] == [{"path": "/labels/team", "kind": "changed", "old": "web", "new": "api"}]
    assert diff["fields_changed"] == [] and diff["steps_reordered"] is False
    assert "adds 1 step (c)" in diff["summary"] and "removes 1 step (gone)" in diff["summary"]
    assert "labels/team changed" in diff["summary"]
    reverse = api.client.get(f"{INTENTS}/{item}/diff?from=2&to=1", headers=api.headers(tenant, READER)).json()
    assert (reverse["steps_added"], reverse["steps_removed"]) == (["gone"], ["c"])
    same = api.client.get(f"{INTENTS}/{item}/diff?from=2&to=2", headers=api.headers(tenant, READER)).json()
    assert same["summary"] == "No changes."
    problem(api.client.get(f"{INTENTS}/{item}/diff?from=1&to=7", headers=api.headers(tenant, READER)), 404)


def test_validate_saves_nothing_and_names_every_problem(api: ApiHarness) -> None:
    tenant = provision(api, "validate")
    before = registry_tables(api)
    good = intent_body("checked", wait_step("a"), {"action": "wait", "seconds": 2})
    ok = api.client.post(f"{INTENTS}/validate", json=good, headers=api.headers(tenant, AUTHOR))
    assert ok.status_code == 200, ok.text
    assert ok.json()["definition"] == normalized(good) and ok.json()["levels"] == [["a"], ["wait"]]
    assert ok.json()["plan_hash"] == plan_hash(normalized(good), None)
    bad = intent_body(
        "checked",
        wait_step("a", depends_on=["b"]),
        wait_step("b", depends_on=["a"]),
        {"action": "deploy-to-kubernets", "namespace": "x"},
        wait_step("a"),
    )
    body = problem(api.client.post(f"{INTENTS}/validate", json=bad, headers=api.headers(tenant, AUTHOR)), 422)
    codes = {(e["pointer"], e["code"]) for e in body["errors"]}
    assert {("/definition/steps/2/action", "unknown_action"), ("/definition/steps/3/id", "duplicate_id")} <= codes
    assert ("/definition/steps/0/depends_on/0", "cyclic_dependency") in codes
    assert all(e["detail"] for e in body["errors"])
    assert "did you mean 'deploy-to-kubernetes'" in next(
        e["detail"] for e in body["errors"] if e["code"] == "unknown_action"
    )
    # The same problems refuse a save.
    saved = problem(api.client.post(INTENTS, json=bad, headers=api.headers(tenant, AUTHOR)), 422)
    assert saved["errors"] == body["errors"]
    assert registry_tables(api) == before


def test_text_postgres_cannot_store_is_a_problem_not_a_crash(api: ApiHarness) -> None:
    tenant = provision(api, "nul")
    before = registry_tables(api)
    body = intent_body("nul", wait_step("a"), description="a\x00b", labels={"team": "w\x00b"})
    response = problem(api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR)), 422)
    assert {(e["pointer"], e["code"]) for e in response["errors"]} == {
        ("/description", "unstorable_text"),
        ("/labels/team", "unstorable_text"),
    }
    assert registry_tables(api) == before


def test_plan_of_a_diamond(api: ApiHarness) -> None:
    tenant = provision(api, "diamond", quotas={**ROOMY, "max_concurrent_executions": 5})
    body = intent_body(
        "diamond",
        wait_step("a"),
        wait_step("b", depends_on=["a"]),
        {"id": "c", "action": "http.request", "url": "https://example.test/c", "depends_on": ["a"], "timeout_s": 42},
        wait_step("d", depends_on=["b", "c"], when="${steps.c.output.status} == 200"),
        target="production",
    )
    item = create(api, tenant, body)["id"]
    before = registry_tables(api)
    response = api.client.post(f"{INTENTS}/{item}/plan", headers=api.headers(tenant, DEPLOYER))
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["levels"] == [["a"], ["b", "c"], ["d"]]
    steps = {step["id"]: step for step in plan["steps"]}
    assert [steps[s]["level"] for s in "abcd"] == [0, 1, 1, 2]
    assert steps["d"]["depends_on"] == ["b", "c"] and steps["d"]["when"] is not None
    assert (steps["c"]["module"], steps["c"]["timeout_s"], steps["c"]["remote"]) == ("http", 42, False)
    assert steps["a"]["module"] == "wait" and steps["a"]["timeout_s"] > 0
    assert all(
        step["authorization"] == {"action": "intent.execute", "allowed": True, "reason": "allowed"}
        for step in plan["steps"]
    )
    assert plan["quota"] == {"max_concurrent_executions": 5, "running_executions": 0, "headroom": 5}
    assert plan["caller_may_execute"] is True and plan["target"] == "production"
    assert plan["plan_hash"] == plan_hash(normalized(body), None)
    again = api.client.post(f"{INTENTS}/{item}/plan", headers=api.headers(tenant, DEPLOYER)).json()
    assert again["plan_hash"] == plan["plan_hash"]
    assert registry_tables(api) == before  # a dry run
    plans = [row for row in api.audit_rows(tenant) if row["detail"].get("operation") == "plan"]
    assert len(plans) == 2 and all(row["action"] == "intent.read" for row in plans)


# ---- listing ---------------------------------------------------------------------------------------------------


def test_list_filters_sorts_and_paginates(api: ApiHarness) -> None:
    tenant = provision(api, "listing")
    for name, labels in (
        ("web-b", {"team": "web", "tier": "1"}),
        ("web-a", {"team": "web"}),
        ("api-a", {"team": "api"}),
        ("web-c", {"team": "web", "tier": "1"}),
    ):
        create(api, tenant, intent_body(name, labels=labels))
    archived = create(api, tenant, intent_body("web-old", labels={"team": "web"}))["id"]
    api.client.delete(f"{INTENTS}/{archived}", headers=api.headers(tenant, AUTHOR))
    create(
        api,
        tenant,
        {"name": "web-blueprint", "labels": {"team": "web"}, "definition": {"steps": [wait_step("x")]}},
        BLUEPRINTS,
    )
    headers = api.headers(tenant, READER)

    def names(query: str, path: str = INTENTS) -> list[str]:
        response = api.client.get(f"{path}?{query}", headers=headers)
        assert response.status_code == 200, response.text
        return [item["name"] for item in response.json()["items"]]

    assert names("") == ["api-a", "web-a", "web-b", "web-c", "web-old"]
    assert names("name_prefix=web-") == ["web-a", "web-b", "web-c", "web-old"]
    assert names("label=team:web&label=tier:1") == ["web-b", "web-c"]
    assert names("label=team:web&label=team:api") == []
    assert names("status=archived") == ["web-old"]
    assert names("status=active&label=team:web") == ["web-a", "web-b", "web-c"]
    assert names("name_prefix=web%25") == []  # a LIKE wildcard is just a character
    assert names("", BLUEPRINTS) == ["web-blueprint"]
    seen, cursor = [], None
    while True:
        page = api.client.get(
            INTENTS, params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=headers
        ).json()
        seen += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["api-a", "web-a", "web-b", "web-c", "web-old"]
    refused = problem(api.client.get(f"{INTENTS}?label=nocolon", headers=headers), 422)
    assert refused["type"].endswith("/validation-error") and refused["detail"] == "1 invalid field(s)"
    assert refused["errors"] == [{"pointer": "/query/label", "detail": "'nocolon' is not key:value"}]
    problem(api.client.get(f"{INTENTS}?cursor=garbage", headers=headers), 400)


# ---- idempotency -----------------------------------------------------------------------------------------------


def test_idempotent_create_replays_and_refuses_another_body(api: ApiHarness) -> None:
    tenant = provision(api, "idem")
    headers = {**api.headers(tenant, AUTHOR), "Idempotency-Key": "create-idem-1"}
    body = intent_body("idem")
    first = api.client.post(INTENTS, json=body, headers=headers)
    assert first.status_code == 201, first.text
    before = registry_tables(api)
    replay = api.client.post(INTENTS, json=body, headers=headers)
    assert replay.status_code == 201 and replay.json() == first.json()
    assert (replay.headers["location"], replay.headers["etag"]) == (first.headers["location"], first.headers["etag"])
    other = problem(api.client.post(INTENTS, json=intent_body("idem-other"), headers=headers), 422)
    assert "different request" in other["detail"]
    assert registry_tables(api) == before
    # The key is bound to the route too: the same key and body on the blueprints route is another request.
    problem(api.client.post(BLUEPRINTS, json=body, headers=headers), 422)
    # Without a key, the second create of the same name is a conflict, not a replay.
    problem(api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR)), 409)
    # A failed create does not consume its key.
    bad = {**api.headers(tenant, AUTHOR), "Idempotency-Key": "create-idem-2"}
    problem(api.client.post(INTENTS, json=intent_body("idem-2", {"action": "nope"}), headers=bad), 422)
    assert api.client.post(INTENTS, json=intent_body("idem-2"), headers=bad).status_code == 201


# ---- isolation and access --------------------------------------------------------------------------------------


def test_another_tenants_intent_is_404_on_every_route(api: ApiHarness) -> None:
    mine, theirs = provision(api, "iso-a"), provision(api, "iso-b")
    foreign = create(api, theirs, intent_body("secret", wait_step("a")))["id"]
    put(api, theirs, foreign, intent_body("secret", wait_step("b")))
    foreign_etag = etag_of(api, theirs, foreign)
    foreign_blueprint = create(api, theirs, {"name": "bp", "definition": {"steps": [wait_step("x")]}}, BLUEPRINTS)["id"]
    create(api, mine, intent_body("mine"))
    before = registry_tables(api)
    roles = ["Intent.Author", "Intent.Deployer"]
    headers = {**api.headers(mine, roles), "If-Match": foreign_etag}
    for path, item in ((INTENTS, foreign), (BLUEPRINTS, foreign), (INTENTS, foreign_blueprint)):
        requests = [
            ("GET", f"{path}/{item}", None),
            ("PUT", f"{path}/{item}", intent_body("secret")),
            ("DELETE", f"{path}/{item}", None),
            ("POST", f"{path}/{item}/rollback", {"to_version": 1}),
            ("GET", f"{path}/{item}/versions", None),
            ("GET", f"{path}/{item}/versions/1", None),
            ("GET", f"{path}/{item}/diff?from=1&to=2", None),
            ("POST", f"{path}/{item}/plan", None),
        ]
        for method, url, json in requests:
            response = api.client.request(method, url, json=json, headers=headers)
            assert problem(response, 404)["detail"].startswith("No "), (method, url)
            assert "secret" not in response.text
    listed = api.client.get(INTENTS, headers=api.headers(mine, READER)).json()["items"]
    assert [item["name"] for item in listed] == ["mine"]
    assert api.client.get(f"{INTENTS}?name_prefix=secret", headers=api.headers(mine, READER)).json()["items"] == []
    assert registry_tables(api) == before
    assert api.client.get(f"{INTENTS}/{foreign}", headers=api.headers(theirs, READER)).json()["version"] == 2


def test_readers_cannot_write_and_authors_can(api: ApiHarness) -> None:
    tenant = provision(api, "abac")
    before = registry_tables(api)
    body = problem(api.client.post(INTENTS, json=intent_body("abac"), headers=api.headers(tenant, READER)), 403)
    assert body["reason"] == "role_required"
    problem(
        api.client.post(
            BLUEPRINTS,
            json={"name": "bp", "definition": {"steps": [wait_step("x")]}},
            headers=api.headers(tenant, EXECUTOR),
        ),
        403,
    )
    assert registry_tables(api) == before
    denied = [row for row in api.audit_rows(tenant) if row["decision"] == "deny"]
    assert [row["action"] for row in denied] == ["intent.create", "blueprint.create"]

    item = create(api, tenant, intent_body("abac"))["id"]
    before = registry_tables(api)
    problem(put(api, tenant, item, intent_body("abac", wait_step("x")), roles=READER), 403)
    problem(api.client.delete(f"{INTENTS}/{item}", headers=api.headers(tenant, READER)), 403)
    problem(
        api.client.post(f"{INTENTS}/{item}/rollback", json={"to_version": 1}, headers=api.headers(tenant, READER)), 403
    )
    assert registry_tables(api) == before
    assert api.client.get(f"{INTENTS}/{item}", headers=api.headers(tenant, READER)).status_code == 200
    problem(api.client.get(f"{INTENTS}/{item}", headers=api.headers(tenant, ["Platform.Admin"])), 403)


def test_plan_shows_production_steps_denied_to_an_executor(api: ApiHarness) -> None:
    tenant = provision(api, "plan-abac")
    production = create(api, tenant, intent_body("prod", wait_step("a"), wait_step("b"), target="production"))["id"]
    staging = create(api, tenant, intent_body("stage", wait_step("a"), target="staging"))["id"]

    plan = api.client.post(f"{INTENTS}/{production}/plan", headers=api.headers(tenant, EXECUTOR)).json()
    assert [step["authorization"] for step in plan["steps"]] == [
        {"action": "intent.execute", "allowed": False, "reason": "production_requires_deployer"}
    ] * 2
    assert plan["caller_may_execute"] is False
    plan = api.client.post(f"{INTENTS}/{staging}/plan", headers=api.headers(tenant, EXECUTOR)).json()
    assert plan["steps"][0]["authorization"]["allowed"] is True and plan["caller_may_execute"] is True
    plan = api.client.post(f"{INTENTS}/{staging}/plan", headers=api.headers(tenant, READER)).json()
    assert plan["steps"][0]["authorization"] == {
        "action": "intent.execute",
        "allowed": False,
        "reason": "role_required",
    }


def test_plan_decides_a_child_intent_step_on_the_child(api: ApiHarness) -> None:
    """An intent.run step is decided as its child's start will be (ADR 0035): on the intent it runs, at the
    version it pins, for the caller."""
    tenant = provision(api, "plan-child")
    create(api, tenant, intent_body("prod-child", wait_step("a"), target="production"))
    staging_child = create(api, tenant, intent_body("stage-child", wait_step("a")))["id"]
    moved = put(api, tenant, staging_child, intent_body("stage-child", wait_step("a"), target="production"))
    assert moved.status_code == 200, moved.text  # version 1 staging, version 2 (current) production
    runs = create(
        api,
        tenant,
        intent_body(
            "runs-children",
            wait_step("first"),
            {"id": "prod", "action": "intent.run", "intent": "prod-child"},
            {"id": "old", "action": "intent.run", "intent": "stage-child", "version": 1},
            {"id": "new", "action": "intent.run", "intent": "stage-child"},
        ),
    )["id"]

    def plan(roles: list[str]) -> tuple[dict[str, Any], bool]:
        answer = api.client.post(f"{INTENTS}/{runs}/plan", headers=api.headers(tenant, roles))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return {step["id"]: step["authorization"]["reason"] for step in body["steps"]}, body["caller_may_execute"]

    reasons, may = plan(EXECUTOR)
    assert reasons == {
        "first": "allowed",
        "prod": "production_requires_deployer",
        "old": "allowed",
        "new": "production_requires_deployer",
    }
    assert may is False
    reasons, may = plan(DEPLOYER)
    assert set(reasons.values()) == {"allowed"} and may is True


def test_plan_follows_a_child_intent_to_the_intents_it_runs(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grandchild is started on the root requester's authority too (ADR 0035), so the plan decides it: a staging
    child that runs a production intent is refused to an Executor; a cycle of intents ends; a child running more
    intents below it than a plan follows is refused."""
    tenant = provision(api, "plan-grandchild")
    create(api, tenant, intent_body("grand-prod", wait_step("a"), target="production"))
    create(api, tenant, intent_body("middle", {"id": "deeper", "action": "intent.run", "intent": "grand-prod"}))
    root = create(api, tenant, intent_body("root", {"id": "child", "action": "intent.run", "intent": "middle"}))["id"]
    # Two intents that run each other (saved as before the save-time cycle check): following them ends.
    with monkeypatch.context() as patched:
        patched.setattr(service, "_cycle_problems", lambda *_a, **_k: [])
        create(api, tenant, intent_body("ping", {"id": "to-pong", "action": "intent.run", "intent": "pong"}))
        create(api, tenant, intent_body("pong", {"id": "to-ping", "action": "intent.run", "intent": "ping"}))
    cycle = create(api, tenant, intent_body("cycle", {"id": "start", "action": "intent.run", "intent": "ping"}))["id"]

    def plan(intent_id: str, roles: list[str]) -> tuple[str, bool]:
        answer = api.client.post(f"{INTENTS}/{intent_id}/plan", headers=api.headers(tenant, roles))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return body["steps"][0]["authorization"]["reason"], body["caller_may_execute"]

    assert plan(root, EXECUTOR) == ("production_requires_deployer", False)
    assert plan(root, DEPLOYER) == ("allowed", True)
    assert plan(cycle, EXECUTOR) == ("allowed", True)
    # The bound counts the child and the intents below it: two for each of these (middle and grand-prod; ping
    # and pong, once).
    monkeypatch.setattr(service, "MAX_PLANNED_DESCENDANTS", 2)
    assert plan(root, DEPLOYER) == ("allowed", True) and plan(cycle, DEPLOYER) == ("allowed", True)
    monkeypatch.setattr(service, "MAX_PLANNED_DESCENDANTS", 1)
    assert plan(root, DEPLOYER) == ("too_many_descendants", False)


def test_gate_violations_are_named_per_step_on_save(api: ApiHarness) -> None:
    tenant = provision(
        api, "gated", allowed_modules=["build-container", "wait", "verify-deployment"], allowed_targets=["staging"]
    )
    body = {
        "name": "gated",
        "definition": {
            "target": "production",
            "steps": [
                {"id": "build", "action": "build-container", "image": "app:1"},
                {
                    "id": "deploy",
                    "action": "deploy-to-kubernetes",
                    "namespace": "prod",
                    "compensate": {"action": "http.request", "method": "POST", "url": "https://example.test/undo"},
                },
                {"id": "pause", "action": "wait", "seconds": 1},
                {"id": "notify", "action": "event.emit", "type": "deployed"},
            ],
        },
    }
    before = registry_tables(api)
    errors = problem(api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR)), 422)["errors"]
    assert [(e["pointer"], e["code"]) for e in errors] == [
        ("/definition/target", "target_not_allowed"),
        ("/definition/steps/1/action", "module_not_allowed"),
        ("/definition/steps/1/compensate/action", "module_not_allowed"),
        ("/definition/steps/3/action", "module_not_allowed"),
    ]
    assert "deploy-to-kubernetes" in errors[1]["detail"]
    assert registry_tables(api) == before


def test_an_intent_that_runs_itself_is_refused_at_validate_create_and_update(api: ApiHarness) -> None:
    # The reviewer's `rv-self`: it saved 201 and failed only when it ran (the run-time refusal stays, for a name
    # built from references and for intents that run each other).
    tenant = provision(api, "recursive")
    before = registry_tables(api)
    itself = intent_body("loops", wait_step("first"), {"id": "again", "action": "intent.run", "intent": "loops"})
    expected = {("/definition/steps/1/intent", "recursive_intent")}
    for path in (f"{INTENTS}/validate", INTENTS):
        body = problem(api.client.post(path, json=itself, headers=api.headers(tenant, AUTHOR)), 422)
        assert {(e["pointer"], e["code"]) for e in body["errors"]} == expected, body
        assert "an intent cannot run itself" in body["errors"][0]["detail"]
    assert registry_tables(api) == before
    saved = create(api, tenant, intent_body("loops", wait_step("first")))
    before = registry_tables(api)
    body = problem(put(api, tenant, saved["id"], itself), 422)
    assert {(e["pointer"], e["code"]) for e in body["errors"]} == expected, body
    assert registry_tables(api) == before
    # Running another intent is as before.
    other = intent_body("loops", wait_step("first"), {"id": "other", "action": "intent.run", "intent": "leaf"})
    assert put(api, tenant, saved["id"], other).status_code == 200
    # A blueprint is no intent: one that runs the intent of its own name runs another thing, and saves.
    blueprint = api.client.post(BLUEPRINTS, json=itself, headers=api.headers(tenant, AUTHOR))
    assert blueprint.status_code == 201, blueprint.text
    # But an intent declared through that blueprint, under the blueprint's name, would run itself: refused at it.
    declaration = {"name": "loops", "definition": {"target": "staging", "blueprint": "loops"}}
    body = problem(api.client.post(f"{INTENTS}/validate", json=declaration, headers=api.headers(tenant, AUTHOR)), 422)
    assert [(e["pointer"], e["code"]) for e in body["errors"]] == [("/definition/blueprint", "recursive_intent")]


def test_a_stored_version_that_runs_itself_still_plans(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Saved before the refusal at save: checking stored versions with it made them unrunnable, unplannable and
    # un-rollbackable (found by a review of the change); the engine refuses the self-run when it comes.
    from shared.registry import step_checks

    tenant = provision(api, "recursive-stored")
    guarded = {"id": "again", "action": "intent.run", "intent": "selfie", "when": "${inputs.env} == 'never'"}
    with monkeypatch.context() as patched:  # as it was saved before
        patched.setattr(step_checks, "_recursion_problems", lambda *_args, **_kwargs: [])
        saved = create(api, tenant, intent_body("selfie", wait_step("first"), guarded))
    planned = api.client.post(f"{INTENTS}/{saved['id']}/plan", headers=api.headers(tenant, AUTHOR))
    assert planned.status_code == 200, planned.text
