# intent_ref: platform.hardening
"""Idempotency-Key: one format, one header, and one answer per key on every route that takes it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from shared.api.durable import get_durable_client
from shared.api.routers.execute import ExecuteRequest
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.idempotency import key_problem
from shared.ingress.request import IntentRequest
from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

TENANT = "keys"
ROLES = ["Intent.Author", "Intent.Executor", "Intent.Reader"]
TABLES = ("intents", "intent_versions", "executions", "execution_steps", "idempotency_keys", "outbox")
MALFORMED = ["has space", "a,b", "x" * 256, "child:mine", "tab\there", "caf\u00e9"]
WELL_FORMED = ["k", "550e8400-e29b-41d4-a716-446655440000", "release-1.2.3:build_7", "x" * 255, "~!@#$%^&*()"]


class RecordingClient:
    """The Durable client the start routes use; records what it was asked to start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def start_new(self, _name: str, instance_id: str, _input: Any) -> str:
        self.started.append(instance_id)
        return instance_id


@dataclass(frozen=True)
class Route:
    """A route that takes the key, and two bodies that are different requests."""

    name: str
    path: Callable[[], str]
    bodies: Callable[[str], tuple[dict[str, Any], dict[str, Any]]]
    """Two different requests, named apart from other tests' by the suffix (a create needs a new name)."""


def _step() -> dict[str, Any]:
    return {"id": "pause", "action": "wait", "seconds": 1}


def _intent(name: str) -> dict[str, Any]:
    return {"name": name, "definition": {"target": "staging", "steps": [_step()]}}


@pytest.fixture(scope="module")
def durable(api: ApiHarness) -> Iterator[RecordingClient]:
    client = RecordingClient()
    app: Any = api.client.app
    app.dependency_overrides[get_durable_client] = lambda: client
    yield client
    app.dependency_overrides.pop(get_durable_client, None)


@pytest.fixture(scope="module")
def intent_id(api: ApiHarness, durable: RecordingClient) -> str:
    api.provision(
        TENANT,
        allowed_modules=["wait"],
        quotas={"requests_per_minute": 100_000, "burst": 10_000, "max_concurrent_executions": 1000},
    )
    created = api.client.post("/api/v1/intents", json=_intent("keyed"), headers=api.headers(TENANT, ROLES))
    assert created.status_code == 201, created.text
    item = created.json()["id"]
    headers = {**api.headers(TENANT, ROLES), "If-Match": created.headers["etag"]}
    updated = api.client.put(f"/api/v1/intents/{item}", json=_intent("keyed"), headers=headers)
    assert updated.status_code == 200, updated.text  # a version 2 to retry on
    return str(item)


def _failed_execution(api: ApiHarness, intent_id: str, app_pool: ConnectionPool[Any]) -> str:
    started = api.client.post(
        f"/api/v1/intents/{intent_id}/execute", json={"version": 1}, headers=api.headers(TENANT, ROLES)
    )
    assert started.status_code == 202, started.text
    execution = started.json()["execution_id"]
    with tenant_transaction(api.tenants[TENANT].id, pool=app_pool) as conn:
        repo.transition(conn, uuid.UUID(execution), "failed", error="to be retried")
    return str(execution)


@pytest.fixture
def routes(api: ApiHarness, intent_id: str, app_pool: ConnectionPool[Any]) -> list[Route]:
    # A failed execution of its own for each test: an execution is retried once (ADR 0014), so a second test's
    # retry of the first's execution, under a key of its own, would be 409 `already-retried`.
    failed = _failed_execution(api, intent_id, app_pool)

    def blueprint(suffix: str) -> dict[str, Any]:
        return {"name": f"kb-{suffix}", "definition": {"steps": [_step()]}}

    return [
        Route("create intent", lambda: "/api/v1/intents", lambda s: (_intent(f"ki-{s}"), _intent(f"ko-{s}"))),
        Route(
            "create blueprint",
            lambda: "/api/v1/blueprints",
            lambda s: (blueprint(s), {**blueprint(s), "description": "other"}),
        ),
        Route(
            "execute", lambda: f"/api/v1/intents/{intent_id}/execute", lambda _: ({"input": {}}, {"input": {"x": "1"}})
        ),
        Route("retry", lambda: f"/api/v1/executions/{failed}/retry", lambda _: ({}, {"version": 2})),
    ]


def _post(api: ApiHarness, route: Route, body: Any, keys: list[str]) -> Any:
    headers = [(name, value) for name, value in api.headers(TENANT, ROLES).items()]
    headers += [("Content-Type", "application/json")] + [("Idempotency-Key", key) for key in keys]
    # As bytes: the wire carries a header value as bytes, whatever a client library would let through as text.
    raw = [(name.encode(), value.encode("latin-1")) for name, value in headers]
    return api.client.post(route.path(), content=json.dumps(body).encode(), headers=raw)


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def test_the_same_key_and_body_replays_the_first_answer(
    api: ApiHarness,
    routes: list[Route],
    durable: RecordingClient,
) -> None:
    for route in routes:
        key = f"replay-{route.name.replace(' ', '-')}-{uuid.uuid4()}"
        body, _ = route.bodies(uuid.uuid4().hex[:8])
        first = _post(api, route, body, [key])
        assert first.status_code in (201, 202), (route.name, first.text)
        snapshot = [api.table_snapshot(table) for table in TABLES]
        started = list(durable.started)
        again = _post(api, route, body, [key])
        assert again.status_code == first.status_code, (route.name, again.text)
        assert again.headers["location"] == first.headers["location"], route.name
        if first.status_code == 201:
            assert again.json() == first.json() and again.headers["etag"] == first.headers["etag"], route.name
        else:  # the same execution, never a second one; `created` tells the replay apart
            assert again.json() == {**first.json(), "created": False}, route.name
            assert durable.started == started, route.name
        assert [api.table_snapshot(table) for table in TABLES] == snapshot, route.name


def test_the_same_key_with_another_body_is_422_everywhere(api: ApiHarness, routes: list[Route]) -> None:
    for route in routes:
        key = f"reuse-{route.name.replace(' ', '-')}-{uuid.uuid4()}"
        body, other = route.bodies(uuid.uuid4().hex[:8])
        assert _post(api, route, body, [key]).status_code in (201, 202), route.name
        snapshot = [api.table_snapshot(table) for table in TABLES]
        problem = _problem(_post(api, route, other, [key]), 422)
        assert problem["type"].endswith("/idempotency-key"), (route.name, problem)
        assert "different request" in problem["detail"], route.name
        assert [api.table_snapshot(table) for table in TABLES] == snapshot, route.name


def test_two_key_headers_are_400_and_change_nothing(api: ApiHarness, routes: list[Route]) -> None:
    snapshot = [api.table_snapshot(table) for table in TABLES]
    for route in routes:
        for keys in (["one", "two"], ["same", "same"]):
            problem = _problem(_post(api, route, route.bodies("two")[0], keys), 400)
            assert problem["type"].endswith("/invalid-idempotency-key"), route.name
            assert problem["header"] == "Idempotency-Key", route.name
            assert [error["pointer"] for error in problem["errors"]] == ["/header/idempotency-key"], route.name
    assert [api.table_snapshot(table) for table in TABLES] == snapshot


def test_a_malformed_key_is_400_naming_the_header(api: ApiHarness, routes: list[Route]) -> None:
    snapshot = [api.table_snapshot(table) for table in TABLES]
    for route in routes:
        for key in MALFORMED:
            problem = _problem(_post(api, route, route.bodies("bad")[0], [key]), 400)
            assert problem["header"] == "Idempotency-Key", (route.name, key)
            assert problem["errors"][0]["pointer"] == "/header/idempotency-key", (route.name, key)
    assert [api.table_snapshot(table) for table in TABLES] == snapshot


def test_the_execute_body_key_has_the_same_format(api: ApiHarness, routes: list[Route]) -> None:
    execute = next(route for route in routes if route.name == "execute")
    snapshot = api.table_snapshot("executions")
    for key in [*MALFORMED, "nul\u0000"]:
        problem = _problem(_post(api, execute, {"input": {}, "idempotency_key": key}, []), 422)
        assert [error["pointer"] for error in problem["errors"]] == ["/idempotency_key"], key
    assert api.table_snapshot("executions") == snapshot
    key = f"body-{uuid.uuid4()}"
    first = _post(api, execute, {"input": {}, "idempotency_key": key}, [])
    assert first.status_code == 202, first.text
    # The body's key and the header name the same execution.
    again = _post(api, execute, {"input": {}}, [key])
    assert again.json()["execution_id"] == first.json()["execution_id"]
    assert again.json()["created"] is False


@pytest.mark.parametrize("key", MALFORMED + WELL_FORMED + ["", "nul\u0000", "line\n"])
def test_every_way_in_accepts_the_same_keys(key: str) -> None:
    accepted = key_problem(key) is None
    assert accepted == (key in WELL_FORMED)
    try:
        ExecuteRequest(idempotency_key=key)
        by_body = True
    except ValidationError:
        by_body = False
    try:
        IntentRequest.parse(json.dumps({"intent": "deploy", "idempotency_key": key}).encode())
        by_ingress = True
    except ValidationError:
        by_ingress = False
    assert (by_body, by_ingress) == (accepted, accepted)
    # A rejected event records its key only when it is one (so the rejection row can always be stored).
    assert (IntentRequest.key_of(json.dumps({"idempotency_key": key}).encode()) == key) == accepted
