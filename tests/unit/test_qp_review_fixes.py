# intent_ref: platform.gateway
"""`qp` as a new user meets it: a 429's wait is said on stderr, `run --follow` off a terminal shows the execution's id
and its events as they come, a refusal's first problem is printed once, an unreadable file is named plainly; the
client's `on_retry` hook that the first needs prints nothing itself."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from quantum_platform import cli
from quantum_platform import client as client_module
from quantum_platform.client import AsyncClient, Client, RetryWait
from quantum_platform.credentials import StaticToken
from quantum_platform.errors import ValidationFailed
from rich.console import Console

from tests.unit.test_cli import ENTRA, INTENT_ID, Platform, home, platform, qp  # noqa: F401  # fixtures

ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}
BUSY = {"type": "https://quantum-platform.dev/problems/tenant-busy", "title": "Too many requests", "status": 429}
INTENT = {"id": INTENT_ID, "name": "web", "version": 1, "status": "active", "updated_at": "2026-12-06T00:19:25Z"}


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    return waits


def _busy_then(answer: httpx.Response) -> httpx.MockTransport:
    """A transport answering a 429 (Retry-After 7) first, then `answer`."""
    answers = [httpx.Response(429, json=BUSY, headers={"Retry-After": "7"}), answer]
    return httpx.MockTransport(lambda request: answers.pop(0))


# ------------------------------------------------------------------------------------------ a 429's wait
def test_qp_says_on_stderr_what_it_waits_for_and_prints_the_result_on_stdout(
    platform: Platform, slept: list[float]
) -> None:
    answers = [httpx.Response(429, json=BUSY, headers={"Retry-After": "7"}), httpx.Response(200, json=INTENT)]
    platform.handler = lambda request: answers.pop(0)
    result = qp("intents", "get", INTENT_ID, "-o", "json", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr.splitlines() == ["waiting 7 s: 429 Too many requests (retry 1 of 4)"]
    assert json.loads(result.stdout) == INTENT
    assert slept == [7.0]


def test_the_client_tells_its_hook_of_each_wait_and_prints_nothing_itself(
    slept: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    heard: list[RetryWait] = []
    transport = _busy_then(httpx.Response(200, json=INTENT))
    with Client(ENTRA, credential=StaticToken("t"), transport=transport, on_retry=heard.append) as hooked:
        assert hooked.get("/api/v1/intents").json() == INTENT
    assert heard == [RetryWait(7.0, "429 Too many requests", 1, 4)]
    with Client(ENTRA, credential=StaticToken("t"), transport=_busy_then(httpx.Response(200, json=INTENT))) as plain:
        assert plain.get("/api/v1/intents").json() == INTENT
    assert slept == [7.0, 7.0]
    assert capsys.readouterr() == ("", "")


def test_the_async_client_tells_its_hook_of_a_lost_connection_too(monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[RetryWait] = []

    async def no_wait(seconds: float) -> None:
        """Waits nothing (the backoff is what the hook hears)."""

    monkeypatch.setattr(client_module.asyncio, "sleep", no_wait)
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=INTENT)

    async def main() -> Any:
        transport = httpx.MockTransport(answer)
        async with AsyncClient(ENTRA, credential=StaticToken("t"), transport=transport, on_retry=heard.append) as c:
            return (await c.get("/api/v1/intents")).json()

    assert asyncio.run(main()) == INTENT
    assert heard == [RetryWait(0.5, "ConnectError", 1, 4)]


# ------------------------------------------------------------------------------------------ run --follow off a terminal
def test_run_follow_off_a_terminal_says_the_id_at_once_and_each_event_as_qp_events_does(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=said, width=300))
    event = {"seq": 1, "type": "execution_completed", "step": None, "result": {"ok": True}}
    execution = {"id": "e-1", "status": "succeeded", "steps": []}
    before_events: list[str] = []
    routes: dict[str, tuple[int, Any]] = {
        f"POST /api/v1/intents/{INTENT_ID}/execute": (202, {"execution_id": "e-1", "status": "pending"}),
        "GET /api/v1/executions/e-1/events": (200, {"items": [event], "next_after": 1}),
        "GET /api/v1/executions/e-1": (200, execution),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            before_events.append(said.getvalue())  # what stderr held before the first event was asked for
        status, body = routes[f"{request.method} {request.url.path}"]
        return httpx.Response(status, json=body)

    platform.handler = handler
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == 0, (result.output, said.getvalue())
    assert before_events[0] == "execution e-1 started\n"
    listed = qp("events", "e-1", env=ENV).stdout.splitlines()
    assert said.getvalue().splitlines() == ["execution e-1 started", *listed]
    assert "execution_completed" in listed[0] and "execution e-1 succeeded" in result.stdout  # the view, at the end


def test_run_follow_on_a_terminal_says_nothing_more_on_stderr(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "out", Console(file=io.StringIO(), force_terminal=True, width=300))
    platform.answer(
        {
            f"POST /api/v1/intents/{INTENT_ID}/execute": httpx.Response(
                202, json={"execution_id": "e-1", "status": "pending"}
            ),
            "GET /api/v1/executions/e-1/events": {"items": [{"seq": 1, "type": "execution_completed"}]},
            "GET /api/v1/executions/e-1": {"id": "e-1", "status": "succeeded", "steps": []},
        }
    )
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr == ""


# ------------------------------------------------------------------------------------------ a refusal's problems
PROBLEM: dict[str, Any] = {
    "title": "Unprocessable content",
    "status": 422,
    "detail": "The intent has 2 problems.",
    "errors": [{"pointer": "/definition", "detail": "a step needs an action"}, {"pointer": "/name", "detail": "bad"}],
}


def test_the_first_of_several_problems_is_printed_once(platform: Platform, tmp_path: Path) -> None:
    definition = tmp_path / "intent.json"
    definition.write_text("{}")
    platform.answer({"POST /api/v1/intents/validate": httpx.Response(422, json=PROBLEM)})
    result = qp("intents", "validate", str(definition), env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM
    assert result.stderr.splitlines() == [
        "error: 422 Unprocessable content: The intent has 2 problems.",
        "  /definition: a step needs an action",
        "  /name: bad",
    ]
    # The library's one line still names the first problem: its callers have no list below it.
    assert ValidationFailed(422, PROBLEM).summary.endswith("(/definition: a step needs an action)")


def test_a_single_problem_stays_on_the_error_line(platform: Platform, tmp_path: Path) -> None:
    definition = tmp_path / "intent.json"
    definition.write_text("{}")
    one = {**PROBLEM, "detail": "The intent has 1 problem.", "errors": PROBLEM["errors"][:1]}
    platform.answer({"POST /api/v1/intents/validate": httpx.Response(422, json=one)})
    result = qp("intents", "validate", str(definition), env=ENV)
    assert result.stderr.splitlines() == [
        "error: 422 Unprocessable content: The intent has 1 problem. (/definition: a step needs an action)"
    ]


# ------------------------------------------------------------------------------------------ an unreadable file
def test_a_file_that_cannot_be_read_is_named_plainly(platform: Platform, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent.json"
    result = qp("intents", "create", str(missing), env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM
    assert result.stderr.splitlines() == [f"error: cannot read {missing}: No such file or directory"]
    folder = qp("intents", "create", str(tmp_path), env=ENV)
    assert folder.stderr.splitlines() == [f"error: cannot read {tmp_path}: Is a directory"]
    assert platform.seen == []
