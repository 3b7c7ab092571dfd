# intent_ref: platform.hardening
"""A body sent where no route takes it (a path no route has, a method the path does not take) is answered 404 or 405
without being parsed, hostile or not, so a flood of such bodies costs nobody a parse; and the task-token completion
routes, whose bodies the edge parses before their token is checked, parse on a limiter of their own, which no other
parse at the edge shares."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from fastapi import Body, FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from shared.api import accepted_input
from shared.api.app import create_app
from shared.config import get_settings

JSON = {"Content-Type": "application/json"}
# Fixed: it is part of the tests' ids, which every process collecting them must name alike.
EXECUTION = "76a0d64a-5c4d-4b31-892f-debe8e597303"
COMPLETION_PATHS = [
    f"/api/v1/executions/{{execution_id}}/steps/{{step_id}}/{tail}"
    for tail in ("complete", "fail", "compensation/complete", "compensation/fail")
]
BODIES = [
    json.dumps({"name": "parsed", "definition": {"target": "staging", "steps": []}}).encode(),
    b'{"name": "cut',
    b"[" * 200_000,  # more arrays than the bound: refused 422 when it is counted
]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # Routing answers these before any dependency runs and the edge refuses the others' bodies before their route:
    # the app needs settings, never a database.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QP_DATABASE_URL", "host=/nonexistent dbname=none")
        patch.setenv("QP_DATABASE_CONTROL_URL", "host=/nonexistent dbname=none")
        patch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
        get_settings.cache_clear()
        try:
            yield TestClient(create_app(), raise_server_exceptions=False)
        finally:
            get_settings.cache_clear()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of the edge's body parsers (the bracket count and the accepted-JSON parse), by name."""
    calls: list[str] = []
    lock = threading.Lock()

    def spy(name: str, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def recorded(body: bytes) -> Any:
            with lock:
                calls.append(name)
            return parse(body)

        return recorded

    for name in ("containers", "loads"):
        monkeypatch.setattr(accepted_input, name, spy(name, getattr(accepted_input, name)))
    return calls


@pytest.fixture
def limiters(monkeypatch: pytest.MonkeyPatch) -> list[anyio.CapacityLimiter | None]:
    """The limiter of every parse the edge makes, in order."""
    seen: list[anyio.CapacityLimiter | None] = []
    parse = accepted_input.parsed

    async def recorded(body: bytes, *, limiter: anyio.CapacityLimiter | None = None) -> Any:
        seen.append(limiter)
        return await parse(body, limiter=limiter)

    monkeypatch.setattr(accepted_input, "parsed", recorded)
    return seen


@pytest.mark.parametrize("body", BODIES, ids=["json", "cut", "brackets"])
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/api/v1/nothing-here", 404),
        ("PUT", "/api/v1/intents/x/nothing-here", 404),
        ("PATCH", "/api/v1/intents", 405),
        ("PUT", f"/api/v1/executions/{EXECUTION}/steps/build/complete", 405),  # a completion route, another method
    ],
)
def test_a_body_no_route_takes_is_answered_without_being_parsed(
    client: TestClient, parses: list[str], method: str, path: str, status: int, body: bytes
) -> None:
    response = client.request(method, path, content=body, headers={**JSON, "X-Request-Id": "unrouted"})
    # Was a parse on the edge's one thread per process, which the completion routes queued behind (a 422 for a body
    # that did not parse): 40 such POSTs of 1 MB held a completion for 22 s.
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    kind = "not-found" if status == 404 else "method-not-allowed"
    assert response.json()["type"] == f"https://quantum-platform.dev/problems/{kind}"
    assert response.headers["x-request-id"] == "unrouted"
    assert parses == []


def test_the_completion_routes_parse_on_a_limiter_no_other_edge_parse_uses(
    client: TestClient, parses: list[str], limiters: list[anyio.CapacityLimiter | None]
) -> None:
    for template in COMPLETION_PATHS:
        path = template.format(execution_id=EXECUTION, step_id="build")
        refused = client.post(path, content=b'{"task_token": ', headers=JSON)
        assert refused.status_code == 422, refused.text[:300]
        assert [error["code"] for error in refused.json()["errors"]] == ["invalid_json"]
    assert parses == ["containers", "loads"] * len(COMPLETION_PATHS)  # parsed at the edge, once each
    completion = limiters[0]
    assert completion is not None
    assert all(limiter is completion for limiter in limiters)
    limiters.clear()

    # Another route that parses its body at the edge: one of a plain route class, behind the same middleware.
    other = FastAPI()
    other.add_middleware(accepted_input.AcceptedInputMiddleware)

    @other.post("/other")
    def take(document: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008  # FastAPI's declaration
        return document

    assert TestClient(other).post("/other", content=b'{"a": 1}', headers=JSON).json() == {"a": 1}
    assert len(limiters) == 1
    # Was the same limiter, one parse per process for both: whatever else parses at the edge holds up no completion.
    assert limiters[0] is not completion
    assert completion is accepted_input.COMPLETION_PARSES


def test_only_the_completion_routes_parse_at_the_edge(client: TestClient) -> None:
    # Every other route taking a body parses it after its permission check: the completion routes' limiter is theirs.
    routes = [context.original_route for context in iter_route_contexts(getattr(client.app, "routes", []))]
    at_edge = sorted(
        str(getattr(route, "path", route))
        for route in routes
        if getattr(route, "methods", set()) & accepted_input.BODY_METHODS
        and getattr(route, "parses_body_after_permission", None) is not True
    )
    assert at_edge == sorted(COMPLETION_PATHS)
