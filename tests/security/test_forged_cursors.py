# intent_ref: platform.hardening
"""A cursor comes back from the caller: a forged one is refused (400 problem+json) or read as the first page."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

READER = ["Intent.Reader", "Tenant.Admin"]


def _cursor(text: str) -> str:
    """A cursor as this API writes them (URL-safe base64 of JSON, unpadded), of whatever JSON text."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


FORGED = {
    "deep nesting": _cursor("[" * 2000),
    "a NUL in a name": _cursor(json.dumps({"name": "a\u0000b"})),
    "a number for an id": _cursor(json.dumps({"t": "2025-01-01T00:00:00+00:00", "id": 5})),
    "an object for a name": _cursor(json.dumps({"name": {"a": 1}})),
    "an object for a time": _cursor(json.dumps({"t": {"a": 1}, "id": str(uuid.uuid4())})),
    "a huge number": _cursor('{"version": ' + "9" * 400 + "}"),
    "not base64": "%%%",
    "not JSON": _cursor("{"),
}


@pytest.fixture(scope="module")
def routes(api: ApiHarness) -> list[tuple[str, dict[str, str]]]:
    api.provision("cursors")
    reader = api.headers("cursors", READER)
    created = api.client.post(
        "/api/v1/intents",
        json={
            "name": "paged",
            "definition": {"target": "staging", "steps": [{"action": "http.request", "url": "https://example.com"}]},
        },
        headers=api.headers("cursors", ["Intent.Author"]),
    )
    assert created.status_code == 201, created.text
    api.provision("cursor-operator")
    return [
        ("/api/v1/executions", reader),
        ("/api/v1/intents", reader),
        ("/api/v1/blueprints", reader),
        (f"/api/v1/intents/{created.json()['id']}/versions", reader),
        ("/api/v1/ingress/rejections", reader),
        ("/api/v1/audit", reader),
        ("/api/v1/tenants", api.headers("cursor-operator", ["Platform.Admin"])),
    ]


@pytest.mark.parametrize("forged", FORGED.values(), ids=FORGED.keys())
def test_every_list_route_refuses_a_forged_cursor_with_a_problem(
    api: ApiHarness, routes: list[tuple[str, dict[str, str]]], forged: str
) -> None:
    # A cursor without the route's own fields reads as the first page; one whose fields a route reads and cannot use,
    # or that is not accepted JSON at all, is refused. Before, deep nesting was a 500 on every route, a NUL on the
    # registry's, a number for an id on the executions' and rejections'.
    refused = 0
    for path, headers in routes:
        answer = api.client.get(path, params={"cursor": forged}, headers=headers)
        assert answer.status_code in (200, 400), (path, answer.status_code, answer.text)
        if answer.status_code == 400:
            assert answer.headers["content-type"] == "application/problem+json", path
            refused += 1
    assert refused >= 1
