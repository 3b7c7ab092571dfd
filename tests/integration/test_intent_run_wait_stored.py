# intent_ref: platform.registry
"""A version stored before `intent.run`'s `wait` was checked, whose `wait` a reference gives (the engine never reads
it, so an input of false was ignored), is refused at execute: 409, the pinned version no longer validates, naming
`wait`; before any orchestration client is used."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from shared.api.durable import get_durable_client
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Executor", "Intent.Reader"]


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("waiting", allowed_modules=["wait", "intent"], quotas={"requests_per_minute": 10_000, "burst": 1_000})


def test_a_stored_intent_run_whose_wait_a_reference_gives_is_refused_at_execute(
    api: ApiHarness, request: pytest.FixtureRequest
) -> None:
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore
    headers = api.headers("waiting", AUTHOR)
    child = f"child-{uuid.uuid4().hex[:8]}"
    steps = [{"id": "pause", "action": "wait", "seconds": 1}]
    made = api.client.post(
        "/api/v1/intents", json={"name": child, "definition": {"target": "staging", "steps": steps}}, headers=headers
    )
    assert made.status_code == 201, made.text
    inputs = {"type": "object", "properties": {"w": {"type": "boolean"}}}
    parent = {
        "name": f"parent-{uuid.uuid4().hex[:8]}",
        "definition": {
            "target": "staging",
            "inputs": inputs,
            "steps": [{"id": "kid", "action": "intent.run", "intent": child}],
        },
    }
    created = api.client.post("/api/v1/intents", json=parent, headers=headers)
    assert created.status_code == 201, created.text
    refused = api.client.post(
        "/api/v1/intents",
        json={
            **parent,
            "name": f"again-{uuid.uuid4().hex[:8]}",
            "definition": {
                **parent["definition"],
                "steps": [{"id": "kid", "action": "intent.run", "intent": child, "wait": "${inputs.w}"}],
            },
        },
        headers=headers,
    )
    assert refused.status_code == 422, refused.text
    assert [(e["pointer"], e["code"]) for e in refused.json()["errors"]] == [
        ("/definition/steps/0/wait", "unsupported_wait")
    ]
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "UPDATE app.intent_versions SET definition = jsonb_set(definition, '{steps,0,params,wait}', %s)"
            " WHERE intent_id = %s",
            (Jsonb("${inputs.w}"), created.json()["id"]),
        )
    executed = api.client.post(
        f"/api/v1/intents/{created.json()['id']}/execute", json={"input": {"w": False}}, headers=headers
    )
    assert executed.status_code == 409, executed.text
    body = executed.json()
    assert body["type"].endswith("/definition-invalid")
    assert (
        "/definition/steps/0/params/wait" in body["detail"]
        and "wait: a value other than a literal true" in body["detail"]
    )
