# intent_ref: platform.registry
"""The subschema bound through the real app: a 422 naming the limit at save and registration, a 409 at execute."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from shared.api.durable import get_durable_client
from shared.registry.problems import MAX_SUBSCHEMAS
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_plan_descendant_budget import meta_checks  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Executor", "Intent.Reader"]
ADMIN = ["Tenant.Admin"]
LIMIT = f"at most {MAX_SUBSCHEMAS:,} are allowed"


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("crowded", allowed_modules=["wait", "acme"], quotas={"requests_per_minute": 10_000, "burst": 1_000})


def crowded(subschemas: int) -> dict[str, Any]:
    """An object schema holding exactly `subschemas` subschemas, itself included."""
    return {"type": "object", "allOf": [{}] * (subschemas - 1)}


def _intent(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "definition": {
            "target": "staging",
            "inputs": inputs,
            "steps": [{"id": "pause", "action": "wait", "seconds": 1}],
        },
    }


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def test_the_reported_input_schema_is_refused_at_save_naming_the_limit(api: ApiHarness, meta_checks: list[int]) -> None:
    """The report's 255 KB `allOf` of 85,000 `{}`: a 422 at /definition/inputs, the meta-schema never run."""
    before = api.table_snapshot("intents")
    response = api.client.post(
        "/api/v1/intents", json=_intent("crowded", crowded(85_000)), headers=api.headers("crowded", AUTHOR)
    )
    body = _problem(response, 422)
    assert [(e["pointer"], e["code"]) for e in body["errors"]] == [("/definition/inputs", "invalid_inputs_schema")]
    assert LIMIT in body["errors"][0]["detail"]
    assert meta_checks == []
    assert api.table_snapshot("intents") == before


def test_a_module_schema_past_the_bound_is_refused_at_registration(api: ApiHarness) -> None:
    before = api.table_snapshot("modules")
    registration = {"action": "acme.crowded", "params_schema": crowded(10_000)}  # 30 KB: within the byte limit
    body = _problem(api.client.post("/api/v1/modules", json=registration, headers=api.headers("crowded", ADMIN)), 422)
    assert [e["pointer"] for e in body["errors"]] == ["/params_schema"]
    assert LIMIT in body["errors"][0]["detail"]
    assert api.table_snapshot("modules") == before


def test_a_module_stored_before_the_bound_is_still_usable(api: ApiHarness) -> None:
    """Registered before the bound: its schema is not checked again when the tenant's catalog is read (it was at
    registration, and a registration is never updated), so the catalog stays readable and intents may use it."""
    action = f"acme.stored-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "INSERT INTO app.modules (tenant_id, action, description, params_schema, defaults, timeout_s, created_by)"
            " VALUES (%s, %s, '', %s, '{}', 60, 'test')",
            (api.tenants["crowded"].id, action, Jsonb(crowded(3_000))),
        )
    doc = {"name": f"uses-{action[5:]}", "definition": {"target": "staging", "steps": [{"id": "a", "action": action}]}}
    response = api.client.post("/api/v1/intents", json=doc, headers=api.headers("crowded", AUTHOR))
    assert response.status_code == 201, response.text
    listed = api.client.get("/api/v1/modules", headers=api.headers("crowded", ADMIN))
    assert listed.status_code == 200 and action in {item["action"] for item in listed.json()["items"]}


def test_an_intent_stored_before_the_bound_is_refused_at_execute(
    api: ApiHarness, request: pytest.FixtureRequest, meta_checks: list[int]
) -> None:
    """Saved before the bound, its input schema cost every execute 24 s of meta-schema checks before it started;
    the execute is refused (409, the version no longer validates) before any orchestration client is used."""
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore
    headers = api.headers("crowded", AUTHOR)
    created = api.client.post("/api/v1/intents", json=_intent("stored-crowded", {"type": "object"}), headers=headers)
    assert created.status_code == 201, created.text
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "UPDATE app.intent_versions SET definition = jsonb_set(definition, '{inputs}', %s) WHERE intent_id = %s",
            (Jsonb(crowded(85_000)), created.json()["id"]),
        )
    meta_checks.clear()
    executed = api.client.post(f"/api/v1/intents/{created.json()['id']}/execute", json={"input": {}}, headers=headers)
    body = _problem(executed, 409)
    assert body["type"].endswith("/definition-invalid") and LIMIT in body["detail"]
    assert meta_checks == []
