# intent_ref: platform.registry
"""Tenant JSON Schemas whose `$ref`s loop or multiply the work, through the real app: refused with a 422 naming
where when saved, a 422 rather than a 500 when one stored before the bounds is used, and a definition full of
misspelt references answered with a bounded number of problems."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from shared.api.durable import get_durable_client
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Executor", "Intent.Reader"]
ADMIN = ["Tenant.Admin"]
SELF_REFERRING = {"type": "object", "properties": {"n": {"type": "string"}}, "$ref": "#"}


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision(
        "bounds", allowed_modules=["wait", "event", "acme"], quotas={"requests_per_minute": 10_000, "burst": 1_000}
    )


def chain(depth: int) -> dict[str, Any]:
    defs: dict[str, Any] = {
        f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]} for i in range(depth)
    }
    defs[f"d{depth}"] = {"type": "object"}
    return {"type": "object", "properties": {"n": {"type": "string"}}, "$defs": defs, "$ref": "#/$defs/d0"}


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


@pytest.mark.parametrize(
    ("inputs", "pointer"),
    [(SELF_REFERRING, "/definition/inputs/$ref"), (chain(22), "/definition/inputs")],
    ids=["self-reference", "exponential"],
)
def test_an_input_schema_with_unbounded_references_is_refused_at_save(
    api: ApiHarness, inputs: dict[str, Any], pointer: str
) -> None:
    before = api.table_snapshot("intents")
    response = api.client.post(
        "/api/v1/intents", json=_intent(f"refs-{uuid.uuid4().hex[:8]}", inputs), headers=api.headers("bounds", AUTHOR)
    )
    body = _problem(response, 422)
    assert [(e["pointer"], e["code"]) for e in body["errors"]] == [(pointer, "invalid_inputs_schema")]
    assert api.table_snapshot("intents") == before


@pytest.mark.parametrize(
    ("schema", "pointer"),
    [(SELF_REFERRING, "/params_schema/$ref"), (chain(22), "/params_schema")],
    ids=["self-reference", "exponential"],
)
def test_a_module_schema_with_unbounded_references_is_refused_at_registration(
    api: ApiHarness, schema: dict[str, Any], pointer: str
) -> None:
    before = api.table_snapshot("modules")
    registration = {"action": "acme.looping", "params_schema": schema}
    body = _problem(api.client.post("/api/v1/modules", json=registration, headers=api.headers("bounds", ADMIN)), 422)
    assert [e["pointer"] for e in body["errors"]] == [pointer]
    assert api.table_snapshot("modules") == before


def test_defaults_referring_into_a_left_out_keyword_are_a_422_not_a_500(api: ApiHarness) -> None:
    schema = {
        "type": "object",
        "allOf": [{"properties": {"a": {"type": "string"}}}],
        "properties": {"b": {"$ref": "#/allOf/0/properties/a"}},
    }
    registration = {"action": "acme.partial", "params_schema": schema, "defaults": {"b": 1}}
    body = _problem(api.client.post("/api/v1/modules", json=registration, headers=api.headers("bounds", ADMIN)), 422)
    assert [e["pointer"] for e in body["errors"]] == ["/defaults/b"]


@pytest.mark.parametrize("schema", [SELF_REFERRING, chain(22)], ids=["self-reference", "exponential"])
def test_a_module_stored_before_the_bounds_makes_intents_using_it_a_422(
    api: ApiHarness, schema: dict[str, Any]
) -> None:
    action = f"acme.stored-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "INSERT INTO app.modules (tenant_id, action, description, params_schema, defaults, timeout_s, created_by)"
            " VALUES (%s, %s, '', %s, '{}', 60, 'test')",
            (api.tenants["bounds"].id, action, Jsonb(schema)),
        )
    doc = {
        "name": "uses-stored",
        "definition": {"target": "staging", "steps": [{"id": "a", "action": action, "n": "v"}]},
    }
    body = _problem(api.client.post("/api/v1/intents", json=doc, headers=api.headers("bounds", AUTHOR)), 422)
    assert [(e["pointer"], e["code"]) for e in body["errors"]] == [("/definition/steps/0", "invalid_params")]
    assert "cannot be evaluated" in body["errors"][0]["detail"]


def test_thousands_of_misspelt_references_report_a_bounded_number_of_problems(api: ApiHarness) -> None:
    inputs = {"type": "object", "properties": {f"p{i:04d}": {} for i in range(300)}}
    data = {f"k{i}": f"${{inputs.q{i:04d}}}" for i in range(3000)}
    doc = {
        "name": "misspelt",
        "definition": {
            "target": "staging",
            "inputs": inputs,
            "steps": [{"id": "a", "action": "event.emit", "type": "t", "data": data}],
        },
    }
    body = _problem(api.client.post("/api/v1/intents", json=doc, headers=api.headers("bounds", AUTHOR)), 422)
    assert {e["code"] for e in body["errors"]} == {"reference_undeclared_input"}
    assert len(body["errors"]) == 50
    assert not any("did you mean" in e["detail"] for e in body["errors"])  # 300 candidates: too many to compare


def test_an_intent_whose_stored_input_schema_loops_is_refused_at_execute_not_a_500(
    api: ApiHarness, request: pytest.FixtureRequest
) -> None:
    # Saved before the bounds, its input schema raised RecursionError when the execute request was checked: a 500.
    # The request is refused before any orchestration client is used.
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore
    headers = api.headers("bounds", AUTHOR)
    created = api.client.post("/api/v1/intents", json=_intent("stored-loop", {"type": "object"}), headers=headers)
    assert created.status_code == 201, created.text
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "UPDATE app.intent_versions SET definition = jsonb_set(definition, '{inputs}', %s) WHERE intent_id = %s",
            (Jsonb(SELF_REFERRING), created.json()["id"]),
        )
    executed = api.client.post(
        f"/api/v1/intents/{created.json()['id']}/execute", json={"input": {"n": "x"}}, headers=headers
    )
    body = _problem(executed, 409)
    assert body["type"].endswith("/definition-invalid") and "input schema cannot be evaluated" in body["detail"]


# --- evaluation budget, bounded violations, linear keywords (ADR 0016, amended 2026-12-05) --------------------------


def nest_if(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"if": schema, "unevaluatedProperties": False}
    return schema


def _created(api: ApiHarness, inputs: dict[str, Any]) -> str:
    created = api.client.post(
        "/api/v1/intents", json=_intent(f"b-{uuid.uuid4().hex[:8]}", inputs), headers=api.headers("bounds", AUTHOR)
    )
    assert created.status_code == 201, created.text
    intent_id: str = created.json()["id"]
    return intent_id


@pytest.fixture()
def no_orchestration(api: ApiHarness, request: pytest.FixtureRequest) -> None:
    """The execute requests below are refused before any orchestration client is used."""
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore


def chained_anyof(definitions: int, levels: int) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    for i in range(definitions):
        inner: dict[str, Any] = {"$ref": f"#/$defs/d{i + 1}"}
        for _ in range(levels):
            inner = {"anyOf": [inner]}
        defs[f"d{i}"] = inner
    defs[f"d{definitions}"] = {"type": "object"}
    return {"type": "object", "$defs": defs, "$ref": "#/$defs/d0"}


@pytest.mark.parametrize(
    ("inputs", "pointer"),
    [
        (nest_if(12), "/definition/inputs"),
        ({"type": "object", "allOf": [{}], "$ref": "#/allOf/" + "1" * 5_000}, "/definition/inputs/$ref"),
        ({"type": "object", "patternProperties": {f"^p{i}$": {} for i in range(300)}}, "/definition/inputs"),
        (chained_anyof(60, 8), "/definition/inputs"),
    ],
    ids=["nested-unevaluated", "huge-array-index", "too-many-patterns", "deep-reference-chain"],
)
def test_an_input_schema_beyond_the_evaluation_bounds_is_a_422_at_save(
    api: ApiHarness, inputs: dict[str, Any], pointer: str
) -> None:
    doc = _intent(f"b-{uuid.uuid4().hex[:8]}", inputs)
    body = _problem(api.client.post("/api/v1/intents", json=doc, headers=api.headers("bounds", AUTHOR)), 422)
    assert [e["pointer"] for e in body["errors"]] == [pointer]


def test_a_module_schema_with_nested_unevaluated_is_a_422_at_registration(api: ApiHarness) -> None:
    registration = {"action": "acme.nested", "params_schema": {"type": "object", "allOf": [nest_if(12)]}}
    body = _problem(api.client.post("/api/v1/modules", json=registration, headers=api.headers("bounds", ADMIN)), 422)
    assert [e["pointer"] for e in body["errors"]] == ["/params_schema"]


def test_an_intent_whose_stored_input_schema_nests_unevaluated_is_refused_at_execute(
    api: ApiHarness, no_orchestration: None
) -> None:
    intent_id = _created(api, {"type": "object"})
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "UPDATE app.intent_versions SET definition = jsonb_set(definition, '{inputs}', %s) WHERE intent_id = %s",
            (Jsonb(nest_if(12)), intent_id),
        )
    executed = api.client.post(
        f"/api/v1/intents/{intent_id}/execute", json={"input": {"a": 1}}, headers=api.headers("bounds", AUTHOR)
    )
    body = _problem(executed, 409)
    assert body["type"].endswith("/definition-invalid") and "input schema cannot be evaluated" in body["detail"]


def test_input_violations_quoting_a_large_schema_value_are_bounded(api: ApiHarness, no_orchestration: None) -> None:
    inputs = {"type": "object", "properties": {"a": {"items": {"const": "x" * 20_000}}}}
    intent_id = _created(api, inputs)
    executed = api.client.post(
        f"/api/v1/intents/{intent_id}/execute",
        json={"input": {"a": [0] * 5_000}},
        headers=api.headers("bounds", AUTHOR),
    )
    body = _problem(executed, 422)
    assert 0 < len(body["errors"]) <= 20
    assert all(len(error["detail"]) <= 300 for error in body["errors"])


def test_unique_items_and_enum_are_enforced_on_a_large_input(api: ApiHarness, no_orchestration: None) -> None:
    inputs = {
        "type": "object",
        "properties": {
            "u": {"type": "array", "uniqueItems": True},
            "e": {"type": "array", "items": {"enum": list(range(2_000))}},
        },
    }
    intent_id = _created(api, inputs)
    given = {"u": ["", *range(5_000), 1.0], "e": [1_999.0] * 3_000 + [True]}
    executed = api.client.post(
        f"/api/v1/intents/{intent_id}/execute", json={"input": given}, headers=api.headers("bounds", AUTHOR)
    )
    body = _problem(executed, 422)
    assert [e["pointer"] for e in body["errors"]] == ["/input/e/3000", "/input/u"]
    assert body["errors"][1]["detail"].endswith("has non-unique elements")
    assert body["errors"][0]["detail"].startswith("True is not one of [0, 1, 2")
