# intent_ref: platform.gateway
"""The client package's own rules, against a scripted transport: retries after Retry-After with one Idempotency-Key
per start, a refused token renewed once, problem+json raised as typed errors, streams that end at the end."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import httpx
import pytest
from quantum_platform import (
    AsyncClient,
    Client,
    Forbidden,
    NotFound,
    ProblemError,
    RateLimited,
    StaticToken,
    Unavailable,
    ValidationFailed,
)
from quantum_platform.cli import _view
from quantum_platform.credentials import Credential
from rich.console import Console

Handler = Callable[[httpx.Request], httpx.Response]


class Tokens:
    """A credential that counts what it was asked for."""

    def __init__(self) -> None:
        self.minted: list[str | None] = []
        self.refreshed = 0

    def token(self, tenant: str | None) -> str:
        self.minted.append(tenant)
        return f"token-{tenant}-{self.refreshed}"

    def refresh(self, tenant: str | None) -> None:  # noqa: ARG002
        self.refreshed += 1


def client(handler: Handler, credential: Credential | None = None) -> Client:
    return Client("http://platform", credential=credential or StaticToken("t"), transport=httpx.MockTransport(handler))


def test_a_start_is_retried_after_retry_after_with_the_same_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            status = 429 if len(seen) == 1 else 503
            return httpx.Response(status, headers={"Retry-After": "0"}, json={"title": "busy", "status": status})
        return httpx.Response(202, json={"execution_id": "e-1"})

    answer = client(handler).post("/api/v1/intents/i-1/execute")
    assert answer["execution_id"] == "e-1" and answer.json() == {"execution_id": "e-1"}
    keys = [request.headers.get("Idempotency-Key") for request in seen]
    assert len(seen) == 3 and keys[0] and keys == [keys[0]] * 3
    # Another start is another key; a read carries none.
    client(handler).post("/api/v1/intents/i-1/execute")
    assert seen[-1].headers["Idempotency-Key"] != keys[0]
    client(handler).get("/api/v1/intents")
    assert "Idempotency-Key" not in seen[-1].headers


def test_a_create_is_retried_with_one_idempotency_key_and_the_tenant_create_carries_none() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) % 2:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"title": "busy", "status": 503})
        return httpx.Response(201, json={"id": "w-1"})

    for path in ("/api/v1/webhooks", "/api/v1/modules", "/api/v1/policies", "/api/v1/intents/"):
        client(handler).post(path, json={"x": 1})
        first, retried = seen[-2:]
        assert (
            first.headers["Idempotency-Key"] and retried.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
        )
    # Without a key a 503 is final: the tenant create may have committed before it, and is not sent again.
    with pytest.raises(Unavailable):
        client(handler).post("/api/v1/tenants", json={"name": "t"})
    assert "Idempotency-Key" not in seen[-1].headers and len(seen) == 9
    # A secret's rotation is given a key too: sent twice without one, the secret receivers hold stops signing.
    client(handler).post("/api/v1/webhooks/w-1/rotate-secret")
    assert seen[-1].headers["Idempotency-Key"]


def test_retries_end_with_a_typed_error() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(429, headers={"Retry-After": "0"}, json={"type": "x/rate-limited", "status": 429})

    with pytest.raises(RateLimited) as raised:
        Client("http://p", credential=StaticToken("t"), max_retries=2, transport=httpx.MockTransport(handler)).get("/x")
    assert calls == 3 and raised.value.status == 429 and raised.value.code == "rate-limited"


def test_a_problem_is_raised_with_its_fields() -> None:
    document = {
        "type": "https://quantum-platform.dev/problems/validation-failed",
        "title": "Unprocessable",
        "status": 422,
        "detail": "the body is invalid",
        "errors": [{"pointer": "/definition/steps/0/action", "detail": "unknown action"}],
        "request_id": "r-1",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json=document, headers={"Content-Type": "application/problem+json"})

    with pytest.raises(ValidationFailed) as raised:
        client(handler).post("/api/v1/intents", json={})
    error = raised.value
    assert error.errors == document["errors"] and error.request_id == "r-1" and error.code == "validation-failed"
    assert str(error) == "422 Unprocessable: the body is invalid (/definition/steps/0/action: unknown action)"
    with pytest.raises(NotFound):
        client(lambda request: httpx.Response(404, text="gone")).get("/api/v1/intents/x")


def test_a_refusal_carries_its_reason_and_says_it() -> None:
    document = {
        "title": "Forbidden",
        "status": 403,
        "detail": "Not allowed to intent.execute.",
        "reason": "self_approval",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json=document, headers={"Content-Type": "application/problem+json"})

    with pytest.raises(Forbidden) as raised:
        client(handler).post("/api/v1/executions/e/approvals/s", json={})
    assert raised.value.reason == "self_approval"
    assert str(raised.value) == "403 Forbidden: Not allowed to intent.execute. (reason: self_approval)"
    # A reason that is not a code (or none) adds nothing.
    for odd in ({"status": 403, "detail": "No.", "reason": {"code": "x"}}, {"status": 403, "detail": "No."}):
        error = ProblemError(403, odd)
        assert (error.reason, str(error)) == (None, "403 Forbidden: No.")


def test_a_refused_token_is_renewed_once_and_set_tenant_switches_tokens() -> None:
    tokens, seen = Tokens(), []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(401 if len(seen) in (1, 3, 4) else 200, json={})

    api = client(handler, tokens)
    api.get("/a")  # 401, then renewed: 200
    api.set_tenant("tenant-123")
    with pytest.raises(Exception, match="401"):
        api.get("/b")  # 401 twice: renewed once only
    assert seen == [
        "Bearer token-None-0",
        "Bearer token-None-1",
        "Bearer token-tenant-123-1",
        "Bearer token-tenant-123-2",
    ]
    assert tokens.minted == [None, None, "tenant-123", "tenant-123"]


def _renew_then_retry(seen: list[httpx.Request], answer: Callable[[], httpx.Response]) -> Handler:
    """401 (a stale token), then 503 with Retry-After, then `answer`; a second 401 would be final."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(401, json={"title": "Unauthorized", "status": 401})
        if len(seen) == 2:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"title": "Unavailable", "status": 503})
        return answer()

    return handler


def test_both_clients_renew_a_refused_token_once_and_wait_out_a_503_on_requests_and_streams() -> None:
    # The four send loops (request and stream, sync and async) take one retry decision: each must follow it.
    def events() -> httpx.Response:
        page = {"status": "succeeded", "next_after": 1, "items": [{"seq": 1, "type": "execution_completed"}]}
        return httpx.Response(200, json=page)

    def intents() -> httpx.Response:
        return httpx.Response(200, json={"items": []})

    def run(send: Callable[[Handler, Tokens], Any], answer: Callable[[], httpx.Response]) -> tuple[Any, list[str], int]:
        seen: list[httpx.Request] = []
        tokens = Tokens()
        result = send(_renew_then_retry(seen, answer), tokens)
        return result, [request.headers["Authorization"] for request in seen], tokens.refreshed

    def sync_get(handler: Handler, tokens: Tokens) -> Any:
        return client(handler, tokens).get("/api/v1/intents").json()

    def sync_stream(handler: Handler, tokens: Tokens) -> Any:
        return [event["type"] for event in client(handler, tokens).stream("/api/v1/executions/e/events")]

    def async_get(handler: Handler, tokens: Tokens) -> Any:
        async def go() -> Any:
            async with AsyncClient("http://p", credential=tokens, transport=httpx.MockTransport(handler)) as api:
                return (await api.get("/api/v1/intents")).json()

        return asyncio.run(go())

    def async_stream(handler: Handler, tokens: Tokens) -> Any:
        async def go() -> Any:
            async with AsyncClient("http://p", credential=tokens, transport=httpx.MockTransport(handler)) as api:
                return [event["type"] async for event in api.stream("/api/v1/executions/e/events")]

        return asyncio.run(go())

    for send in (sync_get, async_get):
        assert run(send, intents) == (
            {"items": []},
            ["Bearer token-None-0", "Bearer token-None-1", "Bearer token-None-1"],
            1,
        ), send.__name__
    for send in (sync_stream, async_stream):
        assert run(send, events) == (
            ["execution_completed"],
            ["Bearer token-None-0", "Bearer token-None-1", "Bearer token-None-1"],
            1,
        ), send.__name__


def test_a_stream_follows_pages_and_ends_after_the_terminal_event() -> None:
    pages = [
        {
            "status": "running",
            "next_after": 2,
            "items": [{"seq": 1, "type": "execution_started"}, {"seq": 2, "type": "step_started"}],
        },
        {"status": "running", "next_after": 2, "items": []},
        {
            "status": "succeeded",
            "next_after": 4,
            "items": [{"seq": 3, "type": "step_completed"}, {"seq": 4, "type": "execution_completed"}],
        },
    ]
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("after"))
        return httpx.Response(200, json=pages[len(asked) - 1])

    events = [event["seq"] for event in client(handler).stream("/api/v1/executions/e/events")]
    assert events == [1, 2, 3, 4] and asked == ["0", "2", "2"]

    async def follow() -> list[Any]:
        asked.clear()
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=transport) as api:
            return [event["type"] async for event in api.stream("/api/v1/executions/e/events")]

    assert asyncio.run(follow())[-1] == "execution_completed"


def _sse(*events: tuple[int, str]) -> str:
    """A server-sent events body: a keep-alive comment, then each event as `id`, `event` and its JSON `data`."""
    parts = [": keep-alive\n\n"]
    parts += [f'id: {seq}\nevent: {kind}\ndata: {{"seq": {seq}, "type": "{kind}"}}\n\n' for seq, kind in events]
    return "".join(parts)


def test_a_server_sent_stream_is_read_and_resumed_from_the_last_event_after_it_breaks_off() -> None:
    bodies = [
        (200, _sse((1, "execution_started"), (2, "step_started"))),  # breaks off before the end
        (503, ""),  # the reconnect is refused once, then retried after Retry-After
        (200, _sse((3, "step_completed"), (4, "execution_completed"), (5, "never_read"))),
    ]
    asked: list[tuple[str | None, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append((request.url.params.get("after"), request.headers.get("accept")))
        status, body = bodies[len(asked) - 1]
        if status != 200:
            return httpx.Response(status, headers={"Retry-After": "0"}, json={"title": "busy", "status": status})
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)

    events = [(event["seq"], event["type"]) for event in client(handler).stream("/api/v1/executions/e/events")]
    assert events == [(1, "execution_started"), (2, "step_started"), (3, "step_completed"), (4, "execution_completed")]
    assert [after for after, _ in asked] == ["0", "2", "2"]
    assert all(accept is not None and accept.startswith("text/event-stream") for _, accept in asked)

    async def follow() -> list[Any]:
        asked.clear()
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=httpx.MockTransport(handler)) as api:
            return [event["seq"] async for event in api.stream("/api/v1/executions/e/events")]

    assert asyncio.run(follow()) == [1, 2, 3, 4]


def test_a_server_sent_stream_with_nothing_after_the_end_asks_once_for_a_page_and_stops() -> None:
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("accept"))
        if request.headers.get("accept", "").startswith("text/event-stream"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=": keep-alive\n\n")
        return httpx.Response(200, json={"status": "succeeded", "next_after": 4, "items": []})

    assert list(client(handler).stream("/api/v1/executions/e/events", after=4)) == []
    assert len(asked) == 2


def test_a_refused_stream_is_raised_as_a_typed_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(
            404, headers={"content-type": "application/problem+json"}, json={"title": "Not found", "status": 404}
        )

    with pytest.raises(NotFound):
        list(client(handler).stream("/api/v1/executions/missing/events"))


def test_the_webhook_helpers_send_the_routes_and_bodies_of_the_api() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204) if request.method == "DELETE" else httpx.Response(200, json={"id": "w/1"})

    hooks = client(handler).webhooks
    hooks.create("https://hooks.example/q", ["execution.completed"], description="bot", idempotency_key="k-1")
    hooks.update("w/1", enabled=False)
    hooks.rotate_secret("w/1")
    hooks.deliveries("w/1")
    assert hooks.delete("w/1").status_code == 204
    sent = [(r.method, r.url.raw_path.decode(), r.content and json.loads(r.content)) for r in seen]
    assert sent == [
        (
            "POST",
            "/api/v1/webhooks",
            {"url": "https://hooks.example/q", "event_types": ["execution.completed"], "description": "bot"},
        ),
        ("PATCH", "/api/v1/webhooks/w%2F1", {"enabled": False}),  # only what changes; the id as one segment
        ("POST", "/api/v1/webhooks/w%2F1/rotate-secret", b""),
        ("GET", "/api/v1/webhooks/w%2F1/deliveries", b""),
        ("DELETE", "/api/v1/webhooks/w%2F1", b""),
    ]
    assert seen[0].headers["Idempotency-Key"] == "k-1"


def test_the_live_view_shows_an_error_as_text_even_when_it_looks_like_markup() -> None:
    # An error quotes what an endpoint answered: a closing tag in it raised MarkupError and stopped `qp run --follow`.
    error = "GET https://x/[/red] answered 500: [bold]down[/]"
    execution = {"id": "e-1", "status": "failed", "steps": [], "error": error, "wait_reason": "queued [/yellow] 5 s"}
    console = Console(record=True, width=200)
    console.print(_view(execution))
    shown = console.export_text()
    assert error in shown and "queued [/yellow] 5 s" in shown


def _answers(*statuses: int) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering `statuses` in turn (Retry-After 0 on each), then 200."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= len(statuses):
            status = statuses[len(seen) - 1]
            return httpx.Response(status, headers={"Retry-After": "0"}, json={"title": "busy", "status": status})
        return httpx.Response(200, json={"id": "x"})

    return handler, seen


def test_a_503_is_retried_only_where_sending_again_cannot_do_a_thing_twice() -> None:
    # A 503 can come after the work committed (raised at COMMIT): a rollback, approval, cancel, PATCH or
    # DELETE is sent once, with an Idempotency-Key or without (those routes ignore it); a 429 is retried for all of
    # them, since nothing ran.
    once: list[Callable[[Client], Any]] = [
        lambda api: api.intents.rollback("i-1", 1),
        # An update carries If-Match: its committed first attempt would make the repetition a 412.
        lambda api: api.intents.update("i-1", {"name": "n"}, if_match='"i-1.v1"'),
        lambda api: api.executions.approve("e-1", "ok"),
        lambda api: api.executions.cancel("e-1"),
        lambda api: api.webhooks.update("w-1", enabled=False),
        lambda api: api.webhooks.delete("w-1"),
        # A key on a route that ignores it makes nothing safe to send again: the first cancel may have committed.
        lambda api: api.post("/api/v1/executions/e-1/cancel", idempotency_key="k-1"),
        lambda api: api.post("/api/v1/executions/e-1/cancel", headers={"idempotency-key": "k-2"}),
    ]
    for call in once:
        handler, seen = _answers(503)
        with pytest.raises(Unavailable):
            call(client(handler))
        assert len(seen) == 1, seen[0]
        handler, seen = _answers(429)
        assert call(client(handler)).status_code == 200 and len(seen) == 2, seen[0]
    # Reads, a PUT, a start and a secret's rotation, which carry a key (their own or a generated one) the route
    # honours, are sent again after a 503, the rotation under the key it was first sent with.
    again: list[Callable[[Client], Any]] = [
        lambda api: api.intents.get("i-1"),
        lambda api: api.request("HEAD", "/api/v1/intents"),
        lambda api: api.put("/api/v1/intents/i-1", json={"name": "n"}),
        lambda api: api.executions.start("i-1"),
        lambda api: api.webhooks.rotate_secret("w-1"),
    ]
    for call in again:
        handler, seen = _answers(503)
        assert call(client(handler)).status_code == 200 and len(seen) == 2, seen[0]
    assert (
        seen[0].headers["Idempotency-Key"] and seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
    )

    async def rollback(handler: Handler) -> Any:
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=httpx.MockTransport(handler)) as api:
            return await api.intents.rollback("i-1", 1)

    handler, seen = _answers(503)
    with pytest.raises(Unavailable):
        asyncio.run(rollback(handler))
    assert len(seen) == 1


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits, recorded instead of slept (both clients')."""
    import types

    import quantum_platform.client as module

    waited: list[float] = []

    async def asleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(module, "time", types.SimpleNamespace(sleep=waited.append))
    monkeypatch.setattr(module, "asyncio", types.SimpleNamespace(sleep=asleep))
    return waited


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_stream_reopened_while_the_backend_restarts_waits_it_out_and_resumes_after_the_last_event(
    status: int, pauses: list[float]
) -> None:
    # API Management answers 502/504 (503 from the app) while the backend restarts, without Retry-After (ADR 0041).
    bodies = [
        (200, _sse((1, "execution_started"), (2, "step_started"))),  # the server goes away here
        (status, ""),
        (status, ""),
        (status, ""),
        (200, _sse((3, "step_completed"), (4, "execution_completed"))),
    ]
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("after"))
        code, body = bodies[len(asked) - 1]
        if code != 200:
            return httpx.Response(code, json={"title": "Bad gateway", "status": code})
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)

    events = [event["seq"] for event in client(handler).stream("/api/v1/executions/e/events")]
    assert events == [1, 2, 3, 4] and asked == ["0", "2", "2", "2", "2"]
    assert pauses == [0.5, 1.0, 2.0]  # the reconnect back-off of a lost connection

    async def follow() -> list[Any]:
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=httpx.MockTransport(handler)) as api:
            return [event["seq"] async for event in api.stream("/api/v1/executions/e/events")]

    asked.clear()
    pauses.clear()
    assert asyncio.run(follow()) == [1, 2, 3, 4] and asked == ["0", "2", "2", "2", "2"]
    assert pauses == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_stream_whose_backend_stays_away_gives_up_after_the_reconnect_budget(
    status: int, pauses: list[float]
) -> None:
    # One budget for every way a reopening fails: 12 reconnects in a row (backing off to 30 s), not 12 after 4 retries.
    opened = 0

    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        nonlocal opened
        opened += 1
        return httpx.Response(status, json={"title": "Bad gateway", "status": status})

    with pytest.raises(ProblemError) as raised:
        list(client(handler).stream("/api/v1/executions/e/events"))
    assert raised.value.status == status and opened == 13
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 6

    async def follow() -> list[Any]:
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=httpx.MockTransport(handler)) as api:
            return [event async for event in api.stream("/api/v1/executions/e/events")]

    opened = 0
    pauses.clear()
    with pytest.raises(ProblemError) as raised:
        asyncio.run(follow())
    assert raised.value.status == status and opened == 13
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 6


def test_a_long_poll_stream_counts_only_failures_in_a_row_against_its_budget(pauses: list[float]) -> None:
    # Twenty lost connections over a long run, each followed by a page that came through: never 12 in a row.
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise httpx.ConnectError("the connection was lost", request=request)
        seq = calls // 2
        kind = "execution_completed" if seq == 20 else "step_completed"
        return httpx.Response(200, json={"status": "running", "next_after": seq, "items": [{"seq": seq, "type": kind}]})

    events = [event["seq"] for event in client(handler).stream("/api/v1/executions/e/events")]
    assert events == list(range(1, 21)) and pauses == [0.5] * 20


PACKAGE = Path(__file__).parents[2] / "clients" / "python"


def _distributions(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-") for requirement in requirements
    }


def _libraries(module: Path) -> set[str]:
    """The top-level names of what importing `module` imports from outside the standard library and the package (an
    optional extra is imported where it is used, and only there)."""
    body = ast.parse(module.read_text(encoding="utf-8")).body
    names = {alias.name for node in body if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in body if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    return {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {"quantum_platform"}


@pytest.mark.parametrize("module", sorted(path.name for path in (PACKAGE / "quantum_platform").glob("*.py")))
def test_the_package_declares_every_library_its_modules_import(module: str) -> None:
    """An installed client's modules import nothing it did not bring: `qp` (cli.py) what its `cli` extra brings, the
    rest what the package's own dependencies bring."""
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = _distributions(project["dependencies"])
    if module == "cli.py":
        declared |= _distributions(project["optional-dependencies"]["cli"])
    for library in _libraries(PACKAGE / "quantum_platform" / module):
        provided_by = _distributions(packages_distributions().get(library, []))
        assert provided_by & declared, f"{module} imports {library}, which the package does not declare"
