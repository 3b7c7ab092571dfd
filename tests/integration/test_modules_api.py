# intent_ref: platform.modules
"""The module catalog API: built-ins and registered remote modules, allow-lists, registration, the intent schema."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from shared.db.session import tenant_transaction
from shared.registry import modules
from shared.registry.catalog import builtin_catalog
from shared.registry.modules import ModuleConflictError, ModuleRegistration, register_module, tenant_catalog
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.unit.test_registry_model import SEED_DECLARATION, SEED_DEPLOY_WEB_APP, SEED_REGISTRY_EXAMPLE

pytestmark = pytest.mark.integration

ADMIN, READER = ["Tenant.Admin"], ["Intent.Reader"]
BUILTIN_FAMILIES = ["http", "artifact", "event", "approval", "wait", "intent", "verify-deployment"]
HELM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "chart": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "wait": {"type": "boolean"},
    },
    "required": ["chart", "namespace"],
    "additionalProperties": False,
}


def helm(action: str = "helm-upgrade", **overrides: Any) -> dict[str, Any]:
    return {
        "action": action,
        "description": "Upgrade a Helm release.",
        "params_schema": copy.deepcopy(HELM_SCHEMA),
        "defaults": {"wait": True},
        "timeout_s": 1800,
        **overrides,
    }


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("alpha", allowed_modules=[*BUILTIN_FAMILIES, "helm-upgrade", "concurrent"])
    api.provision("beta", allowed_modules=[*BUILTIN_FAMILIES, "helm-upgrade"])
    api.provision("narrow", allowed_modules=["http", "verify-deployment"])


def _problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


def _actions(api: ApiHarness, tenant: str, **params: Any) -> dict[str, dict[str, Any]]:
    response = api.client.get("/api/v1/modules", params=params, headers=api.headers(tenant, READER))
    assert response.status_code == 200, response.text
    return {item["action"]: item for item in response.json()["items"]}


# ---- the catalog ------------------------------------------------------------------------------------------


def test_catalog_lists_the_builtins_with_real_json_schemas(api: ApiHarness) -> None:
    items = _actions(api, "beta")
    assert set(builtin_catalog()) <= set(items)
    for action, item in items.items():
        Draft202012Validator.check_schema(item["params_schema"])
        assert item["params_schema"]["type"] == "object", action
        assert item["allowed"] and item["timeout_s"] > 0 and item["description"]
    request = items["http.request"]
    assert (request["module"], request["remote"], request["created_by"]) == ("http", False, None)
    assert "url" in request["params_schema"]["required"] and request["defaults"]["method"] == "GET"
    assert items["verify-deployment"]["alias_of"] == "http.wait_healthy"
    assert list(items) == sorted(items, key=lambda action: (items[action]["remote"], action))


def test_catalog_is_filtered_by_the_tenants_allow_list(api: ApiHarness) -> None:
    assert set(_actions(api, "narrow")) == {"http.request", "http.wait_healthy", "verify-deployment"}
    everything = _actions(api, "narrow", include_disallowed="true")
    assert set(builtin_catalog()) <= set(everything)
    assert {action for action, item in everything.items() if item["allowed"]} == {
        "http.request",
        "http.wait_healthy",
        "verify-deployment",
    }
    # One action by name is readable even when refused, and says so.
    wait = api.client.get("/api/v1/modules/wait", headers=api.headers("narrow", READER))
    assert wait.status_code == 200 and wait.json()["allowed"] is False


def test_listing_needs_a_tenant_role(api: ApiHarness) -> None:
    _problem(api.client.get("/api/v1/modules"), 401)
    body = _problem(api.client.get("/api/v1/modules", headers=api.headers("alpha", [], claims={"scp": "x"})), 403)
    assert body["reason"] == "role_required"
    _problem(api.client.get("/api/v1/modules/no-such-module", headers=api.headers("alpha", READER)), 404)


# ---- registration -----------------------------------------------------------------------------------------


def test_admin_registers_a_module_for_its_own_tenant_only(api: ApiHarness) -> None:
    created = api.client.post("/api/v1/modules", json=helm(), headers=api.headers("alpha", ADMIN))
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == "/api/v1/modules/helm-upgrade"
    assert (body["remote"], body["allowed"], body["timeout_s"], body["defaults"]) == (True, True, 1800, {"wait": True})
    assert body["params_schema"] == HELM_SCHEMA and body["created_by"].startswith(str(api.tenants["alpha"].entra_id))

    listed = _actions(api, "alpha")["helm-upgrade"]
    assert listed == body
    assert api.client.get("/api/v1/modules/helm-upgrade", headers=api.headers("alpha", READER)).json() == body
    # beta even allows the name, yet never sees alpha's module.
    assert "helm-upgrade" not in _actions(api, "beta", include_disallowed="true")
    _problem(api.client.get("/api/v1/modules/helm-upgrade", headers=api.headers("beta", READER)), 404)

    # Validation's catalog is the same: the module is remote in alpha's and absent from beta's.
    with tenant_transaction(api.tenants["alpha"].id) as conn:
        assert tenant_catalog(conn)["helm-upgrade"].remote
    with tenant_transaction(api.tenants["beta"].id) as conn:
        assert "helm-upgrade" not in tenant_catalog(conn) and "http.request" in tenant_catalog(conn)

    audit = [
        r for r in api.audit_rows("alpha") if r["action"] == "module.register" and r["resource_id"] == "helm-upgrade"
    ][:2]
    assert [(r["decision"], r["reason"]) for r in audit] == [("allow", "allowed"), ("allow", "applied")]
    assert audit[-1]["detail"] == {"action": "helm-upgrade", "timeout_s": 1800}


def test_a_registered_module_outside_the_allow_list_is_only_listed_on_request(api: ApiHarness) -> None:
    created = api.client.post("/api/v1/modules", json=helm("canary.promote"), headers=api.headers("alpha", ADMIN))
    assert created.status_code == 201 and created.json()["allowed"] is False
    assert "canary.promote" not in _actions(api, "alpha")
    assert _actions(api, "alpha", include_disallowed="true")["canary.promote"]["module"] == "canary"


@pytest.mark.parametrize("roles", [READER, ["Intent.Author"], ["Intent.Deployer", "Intent.Approver"]])
def test_only_a_tenant_admin_registers(api: ApiHarness, roles: list[str]) -> None:
    before = api.table_snapshot("modules")
    body = _problem(api.client.post("/api/v1/modules", json=helm("sneaky"), headers=api.headers("alpha", roles)), 403)
    assert body["reason"] == "role_required"
    assert api.table_snapshot("modules") == before
    assert api.audit_rows("alpha")[-1]["decision"] == "deny"


@pytest.mark.parametrize(
    ("action", "conflict"),
    [
        ("http.request", "builtin"),  # a built-in
        ("wait", "builtin"),
        ("http.fetch", "builtin"),  # in a built-in's family: the allow-list entry "http" would allow it
        ("intent", "builtin"),
        ("helm-upgrade", "registered"),
    ],
)
def test_conflicts_are_409_and_change_nothing(api: ApiHarness, action: str, conflict: str) -> None:
    admin = api.headers("alpha", ADMIN)
    if conflict == "registered" and "helm-upgrade" not in _actions(api, "alpha"):
        assert api.client.post("/api/v1/modules", json=helm(), headers=admin).status_code == 201
    before = api.table_snapshot("modules")
    body = _problem(api.client.post("/api/v1/modules", json=helm(action), headers=admin), 409)
    assert body["conflict"] == conflict and action in body["detail"]
    assert api.table_snapshot("modules") == before


@pytest.mark.parametrize(
    ("change", "pointers"),
    [
        (
            {"params_schema": {"type": "object", "properties": {"chart": {"type": "strin"}}, "required": "chart"}},
            {"/params_schema/properties/chart/type", "/params_schema/required"},
        ),
        ({"params_schema": {"type": "array", "items": {"type": "string"}}}, {"/params_schema/type"}),
        (
            {"params_schema": {"type": "object", "properties": {"x": {"$ref": "http://169.254.169.254/latest"}}}},
            {"/params_schema/properties/x/$ref"},
        ),
        (
            {"params_schema": {"type": "object", "$schema": "http://json-schema.org/draft-04/schema#"}},
            {"/params_schema/$schema"},
        ),
        ({"defaults": {"wait": "yes"}}, {"/defaults/wait"}),
        ({"defaults": {"unknown": 1}}, {"/defaults"}),
        ({"timeout_s": 0}, {"/timeout_s"}),
        ({"action": "Helm_Upgrade"}, {"/action"}),
    ],
)
def test_an_invalid_registration_is_422_with_pointers(
    api: ApiHarness,
    change: dict[str, Any],
    pointers: set[str],
) -> None:
    before = api.table_snapshot("modules")
    body = _problem(
        api.client.post("/api/v1/modules", json={**helm("broken"), **change}, headers=api.headers("alpha", ADMIN)), 422
    )
    assert {error["pointer"] for error in body["errors"]} == pointers
    assert api.table_snapshot("modules") == before


def test_an_oversized_or_too_deep_schema_is_refused(api: ApiHarness) -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 64} for i in range(600)}}
    for schema in (deep, wide):
        body = _problem(
            api.client.post(
                "/api/v1/modules",
                json=helm("huge", params_schema=schema, defaults={}),
                headers=api.headers("alpha", ADMIN),
            ),
            422,
        )
        assert [error["pointer"] for error in body["errors"]] == ["/params_schema"]


def test_concurrent_registrations_of_one_action_register_it_once(api: ApiHarness) -> None:
    tenant_id = api.tenants["alpha"].id
    registration = ModuleRegistration.model_validate(helm("concurrent"))
    barrier, outcomes = threading.Barrier(2), []

    def register() -> None:
        barrier.wait()
        try:
            with tenant_transaction(tenant_id) as conn:
                register_module(conn, tenant_id, registration, "test")
            outcomes.append("added")
        except ModuleConflictError as exc:
            outcomes.append(f"conflict:{exc.kind}")

    threads = [threading.Thread(target=register) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["added", "conflict:registered"]
    with tenant_transaction(tenant_id) as conn:
        assert conn.execute("SELECT count(*) AS n FROM app.modules WHERE action = 'concurrent'").fetchone() == {"n": 1}


def test_a_tenants_registered_modules_are_bounded_even_when_registered_at_once(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every validation of the tenant's definitions builds a catalog of all its modules: their number was unbounded.
    monkeypatch.setattr(modules, "MAX_TENANT_MODULES", 3)
    api.provision("module-quota")
    admin = api.headers("module-quota", ["Tenant.Admin"])
    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(
            pool.map(lambda n: api.client.post("/api/v1/modules", json=helm(f"bounded-{n}"), headers=admin), range(5))
        )
    assert sorted(a.status_code for a in answers) == [201, 201, 201, 409, 409]
    refused = next(a for a in answers if a.status_code == 409)
    assert refused.json()["conflict"] == "quota" and "3 registered modules" in refused.json()["detail"]
    with tenant_transaction(api.tenants["module-quota"].id) as conn:
        assert conn.execute("SELECT count(*) AS n FROM app.modules").fetchone() == {"n": 3}


# ---- the intent definition schema -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [SEED_DECLARATION, SEED_REGISTRY_EXAMPLE, SEED_DEPLOY_WEB_APP],
    ids=["declaration", "registry-example", "deploy-web-app"],
)
def test_intent_schema_accepts_the_seed_payloads(api: ApiHarness, payload: dict[str, Any]) -> None:
    response = api.client.get("/api/v1/schemas/intent", headers=api.headers("narrow", READER))
    assert response.status_code == 200, response.text
    schema = response.json()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert list(Draft202012Validator(schema).iter_errors(payload)) == []


def test_intent_schema_refuses_what_the_api_refuses(api: ApiHarness) -> None:
    schema = api.client.get("/api/v1/schemas/intent", headers=api.headers("alpha", ["Intent.Author"])).json()
    validator = Draft202012Validator(schema)
    for bad in (
        {"definition": {}},
        {"name": "Not A Slug", "definition": {}},
        {**SEED_DECLARATION, "colour": "red"},
        {"name": "x", "definition": {"steps": [{"action": "wait", "retry": {"max_attempts": 0}}]}},
    ):
        assert not validator.is_valid(bad), bad


def test_intent_schema_needs_authentication_only(api: ApiHarness) -> None:
    _problem(api.client.get("/api/v1/schemas/intent"), 401)
    # No ABAC decision (the document is not tenant data): a caller without any app role may read it.
    response = api.client.get("/api/v1/schemas/intent", headers=api.headers("alpha", [], claims={"scp": "x"}))
    assert response.status_code == 200 and response.json()["required"] == ["name", "definition"]
