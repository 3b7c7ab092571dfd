# intent_ref: platform.gateway
"""What the client sends and sends again, against a scripted transport: the caller's Idempotency-Key, starts retried
through lost connections and gateway timeouts, approvals that are not starts, Retry-After dates, conditional writes
sent once, and listings followed page after page."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from quantum_platform import AsyncClient, Client, Conflict, PlatformError, ProblemError, StaticToken, Unavailable

from tests.unit.test_client_package import pauses  # noqa: F401  # the fixture

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> Client:
    return Client("http://platform", credential=StaticToken("t"), transport=httpx.MockTransport(handler))


def async_client(handler: Handler) -> AsyncClient:
    return AsyncClient("http://platform", credential=StaticToken("t"), transport=httpx.MockTransport(handler))


def first_fails(
    failure: Callable[[httpx.Request], httpx.Response], answer: httpx.Response
) -> tuple[Handler, list[Any]]:
    """A handler whose first request meets `failure` (raised or answered), the others `answer`."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return failure(request) if len(seen) == 1 else answer

    return handler, seen


# ------------------------------------------------------------------------------------------ the caller's key
@pytest.mark.parametrize("spelling", ["Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY"])
def test_the_callers_idempotency_key_header_is_sent_once_and_kept_on_retries(
    spelling: str, pauses: list[float]
) -> None:
    handler, seen = first_fails(
        lambda request: httpx.Response(503, headers={"Retry-After": "0"}, json={"status": 503}),
        httpx.Response(202, json={"execution_id": "e-1"}),
    )
    client(handler).post("/api/v1/intents/i-1/execute", headers={spelling: "release-1.2.3"})
    assert [request.headers.get_list("Idempotency-Key") for request in seen] == [["release-1.2.3"]] * 2
    # The same on a create, and beside other headers of the caller's, which stay.
    handler, seen = first_fails(lambda request: httpx.Response(201, json={}), httpx.Response(201, json={}))
    client(handler).post("/api/v1/webhooks", json={}, headers={spelling: "hook-1", "X-Trace": "t-1"})
    assert seen[0].headers.get_list("Idempotency-Key") == ["hook-1"] and seen[0].headers["X-Trace"] == "t-1"


def test_an_explicit_idempotency_key_wins_over_a_header_and_two_different_headers_are_refused() -> None:
    handler, seen = first_fails(lambda request: httpx.Response(202, json={}), httpx.Response(202, json={}))
    client(handler).post("/api/v1/intents/i-1/execute", headers={"idempotency-key": "h"}, idempotency_key="k")
    assert seen[0].headers.get_list("Idempotency-Key") == ["k"]
    with pytest.raises(ValueError, match="two different Idempotency-Key headers"):
        client(handler).post("/api/v1/intents/i-1/execute", headers={"Idempotency-Key": "a", "idempotency-key": "b"})
    assert len(seen) == 1  # refused before anything was sent


# ------------------------------------------------------------------------------------------ lost answers
def _timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _dropped(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)


@pytest.mark.parametrize(
    "failure",
    [
        _timeout,
        _dropped,
        lambda request: httpx.Response(502, json={"title": "Bad gateway"}),
        lambda request: httpx.Response(504, json={"title": "Gateway timeout"}),
    ],
    ids=["read-timeout", "dropped", "502", "504"],
)
def test_a_start_whose_answer_was_lost_is_sent_again_with_the_same_key(
    failure: Callable[[httpx.Request], httpx.Response], pauses: list[float]
) -> None:
    handler, seen = first_fails(failure, httpx.Response(202, json={"execution_id": "e-1", "created": False}))
    answer = client(handler).executions.start("i-1")
    assert answer["execution_id"] == "e-1" and len(seen) == 2
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
    assert pauses == [0.5]  # the usual backoff

    async def start() -> Any:
        async with async_client(handler) as api:
            return await api.executions.retry("e-0")

    handler, seen = first_fails(failure, httpx.Response(202, json={"execution_id": "e-2"}))
    assert asyncio.run(start())["execution_id"] == "e-2"
    assert len(seen) == 2 and seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]


def test_a_request_that_could_run_twice_is_not_sent_again_after_a_lost_answer(pauses: list[float]) -> None:
    for failure in (_timeout, lambda request: httpx.Response(504, json={"title": "Gateway timeout"})):
        handler, seen = first_fails(failure, httpx.Response(200, json={}))
        with pytest.raises((httpx.ReadTimeout, ProblemError)):
            client(handler).executions.cancel("e-1")
        assert len(seen) == 1
    # Reads are, within max_retries; then the error is raised, with the request it was about.
    seen: list[httpx.Request] = []

    def always(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(httpx.ConnectError):
        client(always).intents.list()
    assert len(seen) == 5 and pauses[-4:] == [0.5, 1.0, 2.0, 4.0]
    # A start that never got through keeps its key on the error: the caller can send the same start again.
    seen.clear()
    with pytest.raises(httpx.ConnectError) as raised:
        client(always).executions.start("i-1")
    assert raised.value.request.headers["Idempotency-Key"] == seen[0].headers["Idempotency-Key"]


@pytest.mark.parametrize("call", ["cancel", "approve"])
def test_a_cancel_or_decision_the_platform_asks_to_be_sent_again_is_sent_again(call: str, pauses: list[float]) -> None:
    # Recorded, but its execution not told yet: the platform answers 503 `orchestration-unavailable` and asks for the
    # same request again, which it answers without applying it twice. The client gave up on it (not repeatable), and
    # the caller was left with an error for a cancel or a decision the run might never hear of.
    asked = {
        "type": "https://quantum-platform.dev/problems/orchestration-unavailable",
        "title": "Service unavailable",
        "status": 503,
        "detail": "The cancel is recorded but could not be handed to the execution yet; send it again in 2 s.",
    }
    answered = {"execution_id": "e-1", "status": "running", "cancel_requested": True, "step_id": "gate"}
    handler, seen = first_fails(
        lambda request: httpx.Response(503, headers={"Retry-After": "0"}, json=asked),
        httpx.Response(202 if call == "cancel" else 200, json={**answered, "decision": "approve", "applied": False}),
    )
    api = client(handler)
    if call == "cancel":
        api.executions.cancel("e-1")
    else:
        api.executions.approve("e-1", "gate")
    assert len(seen) == 2 and seen[0].url == seen[1].url and seen[0].content == seen[1].content
    assert pauses == [0.0]  # the server's Retry-After


# ------------------------------------------------------------------------------------------ what a start is
@pytest.mark.parametrize("step", ["retry", "execute"])
def test_an_approval_of_a_step_named_like_a_start_route_is_not_a_start(step: str, pauses: list[float]) -> None:
    handler, seen = first_fails(
        lambda request: httpx.Response(503, headers={"Retry-After": "0"}, json={"status": 503}),
        httpx.Response(409, json={"title": "Conflict", "detail": "step already decided"}),
    )
    with pytest.raises(Unavailable):
        client(handler).executions.approve("e-1", step)
    assert len(seen) == 1 and "Idempotency-Key" not in seen[0].headers
    # The start routes themselves carry a key (also as full URLs).
    handler, seen = first_fails(lambda request: httpx.Response(202, json={}), httpx.Response(202, json={}))
    api = client(handler)
    api.post("/api/v1/intents/i-1/execute")
    api.post("http://platform/api/v1/executions/e-1/retry/")
    api.post(f"/api/v1/executions/e-1/approvals/{step}", json={"decision": "approve"})
    assert ["Idempotency-Key" in request.headers for request in seen] == [True, True, False]


# ------------------------------------------------------------------------------------------ Retry-After
def _busy_once(retry_after: str) -> Handler:
    handler, _ = first_fails(
        lambda request: httpx.Response(429, headers={"Retry-After": retry_after}, json={"status": 429}),
        httpx.Response(200, json={"items": []}),
    )
    return handler


def test_retry_after_as_an_http_date_is_waited_and_a_non_number_falls_back_to_the_backoff(
    pauses: list[float],
) -> None:
    client(_busy_once(email.utils.formatdate(time.time() + 30, usegmt=True))).get("/api/v1/intents")
    assert 25.0 <= pauses[-1] <= 30.0
    client(_busy_once(email.utils.formatdate(time.time() + 3600, usegmt=True))).get("/api/v1/intents")
    assert pauses[-1] == 60.0  # capped, as a number is
    client(_busy_once("Sat, 01 Jan 2000 00:00:00 GMT")).get("/api/v1/intents")
    assert pauses[-1] == 0.0  # already past
    for value in ("nan", "inf", "-inf", "soon"):
        client(_busy_once(value)).get("/api/v1/intents")
        assert pauses[-1] == 0.5, value
    client(_busy_once("120")).get("/api/v1/intents")
    assert pauses[-1] == 60.0


# ------------------------------------------------------------------------------------------ conditional writes
def test_a_put_with_if_match_is_not_sent_again_after_a_503(pauses: list[float]) -> None:
    handler, seen = first_fails(
        lambda request: httpx.Response(503, headers={"Retry-After": "1"}, json={"status": 503}),
        httpx.Response(412, json={"title": "Precondition failed", "status": 412}),
    )
    with pytest.raises(Unavailable):  # not the 412 of its own committed first attempt
        client(handler).intents.update("i-1", {"name": "n", "definition": {}}, if_match='"i-1.v1"')
    assert len(seen) == 1
    # A 429 still is (nothing ran); so is a PUT without a condition after a 503 (sent as is: the helpers' updates
    # carry one, which their routes require).
    handler, seen = first_fails(
        lambda request: httpx.Response(429, headers={"Retry-After": "0"}, json={"status": 429}),
        httpx.Response(412, json={"title": "Precondition failed", "status": 412}),
    )
    with pytest.raises(Conflict):
        client(handler).intents.update("i-1", {"name": "n"}, if_match='"i-1.v1"')
    assert len(seen) == 2
    handler, seen = first_fails(
        lambda request: httpx.Response(503, headers={"Retry-After": "0"}, json={"status": 503}),
        httpx.Response(200, json={"version": 2}),
    )
    assert client(handler).put("/api/v1/intents/i-1", json={"name": "n"})["version"] == 2 and len(seen) == 2


@pytest.mark.parametrize("kind", ["intents", "blueprints"])
def test_an_update_sends_the_etag_it_must_carry_and_is_refused_before_sending_without_one(kind: str) -> None:
    """The update routes require If-Match (428 without it): the helper takes the ETag as a required keyword and sends
    it; without one (missing, None, empty) nothing is sent. Before, `if_match` was optional and an update without it
    went out as a PUT the server could only refuse."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"version": 2}, headers={"ETag": '"i-1.v2"'})

    definitions = getattr(client(handler), kind)
    assert definitions.update("i-1", {"name": "n"}, if_match='"i-1.v1"')["version"] == 2
    assert [(r.method, r.url.path, r.headers["If-Match"]) for r in seen] == [("PUT", f"/api/v1/{kind}/i-1", '"i-1.v1"')]
    seen.clear()
    with pytest.raises(TypeError, match="if_match"):
        definitions.update("i-1", {"name": "n"})
    for missing in (None, ""):
        with pytest.raises(ValueError, match="ETag"):
            definitions.update("i-1", {"name": "n"}, if_match=missing)
    assert seen == []

    async def without_etag() -> None:
        async with async_client(handler) as api:
            await getattr(api, kind).update("i-1", {"name": "n"}, if_match=None)

    with pytest.raises(ValueError, match="ETag"):
        asyncio.run(without_etag())
    assert seen == []


# ------------------------------------------------------------------------------------------ listings
def _pages(path: str, count: int) -> tuple[Handler, list[httpx.Request]]:
    """`count` pages of two items at `path`, each naming the next by cursor."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.url.path == path
        page = int(request.url.params.get("cursor", "c0")[1:])
        following = f"c{page + 1}" if page + 1 < count else None
        items = [{"id": f"{page}-{n}"} for n in range(2)]
        return httpx.Response(200, json={"items": items, "next_cursor": following})

    return handler, seen


def test_the_list_helpers_send_a_cursor_and_the_routes_filters() -> None:
    handler, seen = _pages("/api/v1/executions", 3)
    api = client(handler)
    page = api.executions.list(status="failed", intent_id="i-1", created_after="2025-01-01T00:00:00Z", cursor="c1")
    assert page["next_cursor"] == "c2"
    assert dict(seen[-1].url.params) == {
        "status": "failed",
        "intent_id": "i-1",
        "created_after": "2025-01-01T00:00:00Z",
        "cursor": "c1",
    }
    handler, seen = _pages("/api/v1/intents", 1)
    client(handler).intents.list(name_prefix="web", label=["team:web", "tier:1"], limit=10, cursor="c0")
    assert seen[-1].url.params.multi_items() == [
        ("name_prefix", "web"),
        ("label", "team:web"),
        ("label", "tier:1"),
        ("limit", "10"),
        ("cursor", "c0"),
    ]
    handler, seen = _pages("/api/v1/intents/i-1/versions", 2)
    client(handler).intents.versions("i-1", cursor="c1")
    assert dict(seen[-1].url.params) == {"cursor": "c1"}


def test_iterate_follows_next_cursor_to_the_last_page_in_both_clients() -> None:
    handler, seen = _pages("/api/v1/executions", 3)
    ids = [item["id"] for item in client(handler).executions.iterate(status="failed", page_size=2)]
    assert ids == ["0-0", "0-1", "1-0", "1-1", "2-0", "2-1"]
    assert [dict(request.url.params) for request in seen] == [
        {"status": "failed", "limit": "2"},
        {"status": "failed", "limit": "2", "cursor": "c1"},
        {"status": "failed", "limit": "2", "cursor": "c2"},
    ]

    async def every() -> list[str]:
        handler, _ = _pages("/api/v1/intents", 2)
        async with async_client(handler) as api:
            return [item["id"] async for item in api.intents.iterate(label="team:web")]

    assert asyncio.run(every()) == ["0-0", "0-1", "1-0", "1-1"]

    def stuck(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": [{"id": "x"}], "next_cursor": "same"})

    with pytest.raises(PlatformError, match="the cursor it was sent"):  # never a loop
        list(client(stuck).audit.iterate())
