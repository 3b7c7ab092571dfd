# intent_ref: platform.gateway
"""Which key the server sees, and which keyed requests the client sends again, against a scripted transport: a start
keyed in its body keeps that key, and a key makes a request repeatable only on a route that honours it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from quantum_platform import ProblemError

from tests.unit.test_client_package import pauses  # noqa: F401  # the fixture
from tests.unit.test_client_requests import Handler, async_client, client, first_fails

EXECUTE = "/api/v1/intents/0b6f3c1e-5d2a-4c1f-9e7b-2a8d4f6c9e10/execute"


def used_key(request: httpx.Request) -> str | None:
    """The key the execute route starts by: the header's, else the body's (both, when sent, must be the same key)."""
    body = json.loads(request.content) if request.content else {}
    return request.headers.get("Idempotency-Key") or body.get("idempotency_key")


def _timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


# ------------------------------------------------------------------------------------------ a key in the body
def test_a_start_keyed_in_its_body_is_started_by_that_key_every_time_it_is_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"execution_id": "e-1", "created": len(seen) == 1})

    body = {"input": {}, "idempotency_key": "order-42"}
    api = client(handler)
    api.post(EXECUTE, json=body)
    api.post(EXECUTE, json=body)  # the producer's own repetition of the same start

    async def start() -> None:
        async with async_client(handler) as asynchronous:
            await asynchronous.post(EXECUTE, json=body)

    asyncio.run(start())
    assert [used_key(request) for request in seen] == ["order-42"] * 3
    assert all("Idempotency-Key" not in request.headers for request in seen)
    # Without a key of its own in the body (or with one that is not a string) the start is still given one.
    api.post(EXECUTE, json={"input": {}})
    api.post(EXECUTE, json={"input": {}, "idempotency_key": None})
    assert all(request.headers.get("Idempotency-Key") for request in seen[-2:])


def test_a_start_keyed_in_its_body_is_sent_again_after_a_lost_answer_and_a_header_key_still_wins(
    pauses: list[float],
) -> None:
    for failure in (_timeout, lambda request: httpx.Response(504, json={"title": "Gateway timeout"})):
        handler, seen = first_fails(failure, httpx.Response(202, json={"execution_id": "e-1", "created": False}))
        client(handler).post(EXECUTE, json={"idempotency_key": "order-42"})
        assert [used_key(request) for request in seen] == ["order-42"] * 2
    # The caller's own header key, given either way, is sent as it was: the route lets it win over the body's.
    handler, seen = first_fails(lambda request: httpx.Response(202, json={}), httpx.Response(202, json={}))
    client(handler).post(EXECUTE, json={"idempotency_key": "order-42"}, idempotency_key="k-1")
    client(handler).post(EXECUTE, json={"idempotency_key": "order-42"}, headers={"idempotency-key": "k-2"})
    assert [request.headers.get_list("Idempotency-Key") for request in seen] == [["k-1"], ["k-2"]]


# ------------------------------------------------------------------------------------------ routes that ignore a key
IGNORING: list[tuple[str, str]] = [
    ("POST", "/api/v1/intents/i-1/rollback"),
    ("POST", "/api/v1/blueprints/b-1/rollback"),
    ("POST", "/api/v1/executions/e-1/approvals/gate"),
    ("POST", "/api/v1/executions/e-1/cancel"),
    ("POST", "/api/v1/executions/e-1/steps/build/complete"),
    ("POST", "/api/v1/work/lease"),
    ("POST", "/api/v1/work/w-1/heartbeat"),
    ("PATCH", "/api/v1/webhooks/w-1"),
    ("DELETE", "/api/v1/webhooks/w-1"),
    ("PATCH", "/api/v1/tenant"),
    ("PATCH", "/api/v1/tenants/t-1"),
    ("DELETE", "/api/v1/policies/p-1"),
    ("POST", "/api/v1/tenants/t-1/erase"),
]


@pytest.mark.parametrize(
    "failure",
    [
        _timeout,
        lambda request: httpx.Response(502, json={"title": "Bad gateway"}),
        lambda request: httpx.Response(503, headers={"Retry-After": "0"}, json={"status": 503}),
        lambda request: httpx.Response(504, json={"title": "Gateway timeout"}),
    ],
    ids=["read-timeout", "502", "503", "504"],
)
@pytest.mark.parametrize("given", ["argument", "header"])
def test_a_key_on_a_route_that_ignores_it_does_not_send_the_request_again(
    failure: Callable[[httpx.Request], httpx.Response], given: str, pauses: list[float]
) -> None:
    key: dict[str, Any] = {"idempotency_key": "k-1"} if given == "argument" else {"headers": {"Idempotency-Key": "k-1"}}
    for method, path in IGNORING:
        handler, seen = first_fails(failure, httpx.Response(200, json={}))
        with pytest.raises((httpx.ReadTimeout, ProblemError)):
            client(handler).request(method, path, json={}, **key)
        assert len(seen) == 1 and seen[0].headers["Idempotency-Key"] == "k-1", (method, path)

        async def send(handler: Handler = handler, method: str = method, path: str = path) -> None:
            async with async_client(handler) as api:
                await api.request(method, path, json={}, **key)

        handler, seen = first_fails(failure, httpx.Response(200, json={}))
        with pytest.raises((httpx.ReadTimeout, ProblemError)):
            asyncio.run(send(handler))
        assert len(seen) == 1, (method, path)
    # A PUT that is repeatable only without If-Match is not made repeatable by a key either.
    handler, seen = first_fails(failure, httpx.Response(200, json={}))
    with pytest.raises((httpx.ReadTimeout, ProblemError)):
        conditional = {"If-Match": '"i-1.v1"', **key.get("headers", {})}
        client(handler).put(
            "/api/v1/intents/i-1", json={}, headers=conditional, idempotency_key=key.get("idempotency_key")
        )
    assert len(seen) == 1
    assert pauses == []


def test_a_key_on_a_route_that_honours_it_still_sends_the_request_again(pauses: list[float]) -> None:
    honouring = ["/api/v1/intents/i-1/execute", "/api/v1/executions/e-1/retry", "/api/v1/tenants/"]
    honouring += ["/api/v1/webhooks/w-1/rotate-secret", "/api/v1/tenants/t-1/export"]
    honouring += [f"/api/v1/{name}" for name in ("intents", "blueprints", "webhooks", "modules", "policies")]
    for path in honouring:
        handler, seen = first_fails(
            lambda request: httpx.Response(504, json={"title": "Gateway timeout"}), httpx.Response(201, json={})
        )
        client(handler).post(path, json={}, idempotency_key="k-1")
        assert [request.headers["Idempotency-Key"] for request in seen] == ["k-1"] * 2, path


def test_a_keyed_request_to_an_ignoring_route_is_still_sent_again_after_a_429_or_when_asked_to(
    pauses: list[float],
) -> None:
    # Nothing ran on a 429; an `orchestration-unavailable` 503 asks for the same request, applied once.
    asked = {"type": "https://quantum-platform.dev/problems/orchestration-unavailable", "status": 503}
    for failure in (
        lambda request: httpx.Response(429, headers={"Retry-After": "0"}, json={"status": 429}),
        lambda request: httpx.Response(503, headers={"Retry-After": "0"}, json=asked),
    ):
        handler, seen = first_fails(failure, httpx.Response(202, json={}))
        client(handler).post("/api/v1/executions/e-1/cancel", idempotency_key="k-1")
        assert len(seen) == 2 and seen[1].headers["Idempotency-Key"] == "k-1"
    assert pauses == [0.0, 0.0]
