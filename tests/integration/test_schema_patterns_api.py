# intent_ref: platform.registry
"""Tenant JSON Schema regexes through the real app: catastrophic ones evaluate promptly at execute time, ones the
linear-time engine cannot run are refused at registration (422) and nothing is stored.

With Python's `re`, the execute request below would not return within the test run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.api.durable import get_durable_client
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Executor", "Intent.Reader"]
CATASTROPHIC = "^(a+)+$"
HOSTILE = "a" * 50 + "!"


class RecordingClient:
    """The Durable client the execute route starts orchestrations with; records what it was asked to start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def start_new(self, _name: str, instance_id: str, _input: Any) -> str:
        self.started.append(instance_id)
        return instance_id


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("patterns", allowed_modules=["wait"], quotas={"requests_per_minute": 10_000, "burst": 1_000})


@pytest.fixture()
def durable(api: ApiHarness) -> Iterator[RecordingClient]:
    client = RecordingClient()
    app: Any = api.client.app
    app.dependency_overrides[get_durable_client] = lambda: client
    yield client
    app.dependency_overrides.pop(get_durable_client, None)


def _intent(name: str, pattern: str) -> dict[str, Any]:
    return {
        "name": name,
        "definition": {
            "target": "staging",
            "steps": [{"id": "pause", "action": "wait", "seconds": 1}],
            "inputs": {"type": "object", "properties": {"name": {"type": "string", "pattern": pattern}}},
        },
    }


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def test_a_catastrophic_input_pattern_fails_promptly_at_execute_time(
    api: ApiHarness,
    durable: RecordingClient,
) -> None:
    headers = api.headers("patterns", AUTHOR)
    created = api.client.post("/api/v1/intents", json=_intent("catastrophic", CATASTROPHIC), headers=headers)
    assert created.status_code == 201, created.text
    intent_id = created.json()["id"]

    before = api.table_snapshot("executions")
    refused = _problem(
        api.client.post(f"/api/v1/intents/{intent_id}/execute", json={"input": {"name": HOSTILE}}, headers=headers), 422
    )
    assert [error["pointer"] for error in refused["errors"]] == ["/input/name"]
    assert "does not match" in refused["errors"][0]["detail"]
    assert api.table_snapshot("executions") == before and durable.started == []

    accepted = api.client.post(
        f"/api/v1/intents/{intent_id}/execute", json={"input": {"name": "a" * 5000}}, headers=headers
    )
    assert accepted.status_code == 202, accepted.text
    assert durable.started == [accepted.json()["execution_id"]]


@pytest.mark.parametrize("pattern", [r"^(\w+)-\1$", "^(?!admin)", "(?<=x)y"])
def test_an_unsupported_input_pattern_is_refused_at_registration(api: ApiHarness, pattern: str) -> None:
    before = api.table_snapshot("intents")
    body = _problem(
        api.client.post(
            "/api/v1/intents", json=_intent("unsupported", pattern), headers=api.headers("patterns", AUTHOR)
        ),
        422,
    )
    assert [error["pointer"] for error in body["errors"]] == ["/definition/inputs/properties/name/pattern"]
    assert repr(pattern) in body["errors"][0]["detail"]
    assert api.table_snapshot("intents") == before


def test_an_unsupported_module_parameter_pattern_is_refused_at_registration(api: ApiHarness) -> None:
    before = api.table_snapshot("modules")
    registration = {
        "action": "tagger",
        "params_schema": {"type": "object", "patternProperties": {"^(?=x)": {"type": "string"}}},
    }
    body = _problem(
        api.client.post("/api/v1/modules", json=registration, headers=api.headers("patterns", ["Tenant.Admin"])), 422
    )
    assert [error["pointer"] for error in body["errors"]] == ["/params_schema/patternProperties/^(?=x)"]
    assert api.table_snapshot("modules") == before
