# intent_ref: platform.registry
"""A rollback's `to_version` is a JSON integer and nothing else: `true`, `1e3` and `"1"` are refused (422
problem+json at `/to_version`) and write nothing. Before, `true` read as 1 and wrote a new version, and `1e3` as 1000.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
ROOMY = {"requests_per_minute": 100_000, "burst": 10_000}
PATHS = {"intent": "/api/v1/intents", "blueprint": "/api/v1/blueprints"}


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("strict-rollback", quotas=ROOMY, allowed_modules=["wait"])


def body(kind: str, name: str, seconds: int) -> dict[str, Any]:
    definition: dict[str, Any] = {"steps": [{"id": "only", "action": "wait", "seconds": seconds}]}
    if kind == "intent":
        definition["target"] = "staging"
    return {"name": name, "definition": definition}


def tables(api: ApiHarness) -> tuple[Any, ...]:
    """Everything a rollback writes, to prove a refused one wrote nothing."""
    names = ("intents", "intent_versions", "outbox", "audit_events")
    return tuple(api.table_snapshot(table) for table in names)


def two_versions(api: ApiHarness, kind: str) -> str:
    """An item of `kind` with versions 1 and 2; returns its id."""
    headers, name = api.headers("strict-rollback", AUTHOR), f"strict-{uuid.uuid4().hex[:8]}"
    created = api.client.post(PATHS[kind], json=body(kind, name, 1), headers=headers)
    assert created.status_code == 201, created.text
    item = str(created.json()["id"])
    updated = api.client.put(
        f"{PATHS[kind]}/{item}", json=body(kind, name, 2), headers={**headers, "If-Match": created.headers["etag"]}
    )
    assert updated.status_code == 200 and updated.json()["version"] == 2, updated.text
    return item


@pytest.mark.parametrize("kind", ["intent", "blueprint"])
@pytest.mark.parametrize("raw", ['{"to_version": true}', '{"to_version": 1e3}', '{"to_version": "1"}'])
def test_a_rollback_version_that_is_not_a_json_integer_is_refused(api: ApiHarness, kind: str, raw: str) -> None:
    item = two_versions(api, kind)
    before = tables(api)
    headers = {**api.headers("strict-rollback", AUTHOR), "Content-Type": "application/json"}
    response = api.client.post(f"{PATHS[kind]}/{item}/rollback", content=raw.encode(), headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    # Refused as a request, not read as a version number (`unknown_version` for 1000).
    assert errors == [{"pointer": "/to_version", "detail": "Input should be a valid integer"}]
    assert tables(api) == before
    current = api.client.get(f"{PATHS[kind]}/{item}", headers=api.headers("strict-rollback", AUTHOR))
    assert current.json()["version"] == 2


def test_an_integer_rollback_version_still_rolls_back(api: ApiHarness) -> None:
    item = two_versions(api, "intent")
    headers = {**api.headers("strict-rollback", AUTHOR), "Content-Type": "application/json"}
    response = api.client.post(f"{PATHS['intent']}/{item}/rollback", content=b'{"to_version": 1}', headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 3 and response.json()["origin"] == {"kind": "rollback", "from_version": 1}
