# intent_ref: platform.gateway
"""A follow that reconnects says what it waits for, as a retried call does: the client's `on_retry` hook hears each
reconnect's wait (both clients), `qp events --follow` prints it on stderr, and `RetryWait`, which the hook is given,
comes from the package root."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import quantum_platform
from quantum_platform import AsyncClient, Client, RetryWait, StaticToken

from tests.unit.test_cli import ENTRA, Platform, home, platform, qp  # noqa: F401  # fixtures
from tests.unit.test_client_package import pauses  # noqa: F401  # the fixture

EVENTS = "/api/v1/executions/e-1/events"
DONE = {
    "execution_id": "e-1",
    "status": "succeeded",
    "next_after": 1,
    "items": [{"seq": 1, "type": "execution_completed"}],
}
RESTARTING = {"type": "about:blank", "title": "Service unavailable", "status": 503}


def broken_then_done() -> httpx.MockTransport:
    """The events URL: a lost connection, then a backend restarting (503, no Retry-After), then the ended page."""
    answers: list[Any] = ["lost", httpx.Response(503, json=RESTARTING), httpx.Response(200, json=DONE)]

    def answer(request: httpx.Request) -> httpx.Response:
        step = answers.pop(0)
        if step == "lost":
            raise httpx.ConnectError("refused", request=request)
        assert isinstance(step, httpx.Response)
        return step

    return httpx.MockTransport(answer)


EXPECTED = [RetryWait(0.5, "ConnectError", 1, 12), RetryWait(1.0, "503 Service unavailable", 2, 12)]


def test_the_package_root_exports_the_hooks_retry_wait() -> None:
    assert "RetryWait" in quantum_platform.__all__
    assert quantum_platform.RetryWait is quantum_platform.client.RetryWait


def test_the_client_tells_its_hook_of_each_reconnect_wait(pauses: list[float]) -> None:
    heard: list[RetryWait] = []
    with Client(ENTRA, credential=StaticToken("t"), transport=broken_then_done(), on_retry=heard.append) as client:
        assert list(client.stream(EVENTS)) == DONE["items"]
    assert heard == EXPECTED
    assert pauses == [0.5, 1.0]  # the waits the hook was told of are the ones waited


def test_the_async_client_tells_its_hook_of_each_reconnect_wait(pauses: list[float]) -> None:
    heard: list[RetryWait] = []

    async def follow() -> list[dict[str, Any]]:
        transport = broken_then_done()
        async with AsyncClient(ENTRA, credential=StaticToken("t"), transport=transport, on_retry=heard.append) as c:
            return [event async for event in c.stream(EVENTS)]

    assert asyncio.run(follow()) == DONE["items"]
    assert heard == EXPECTED
    assert pauses == [0.5, 1.0]


def test_qp_events_follow_says_on_stderr_what_each_reconnect_waits_for(
    platform: Platform,
    pauses: list[float],
) -> None:
    transport = broken_then_done()
    platform.handler = lambda request: transport.handle_request(request)
    result = qp("events", "e-1", "--follow", "--output", "json", env={"QP_TOKEN": "t", "QP_URL": ENTRA})
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr.splitlines() == [
        "waiting 0.5 s: ConnectError (retry 1 of 12)",
        "waiting 1 s: 503 Service unavailable (retry 2 of 12)",
    ]
    assert [json.loads(line) for line in result.stdout.splitlines()] == DONE["items"]


@pytest.mark.parametrize("status", [429, 502])
def test_a_reconnect_after_retry_after_says_the_servers_wait(
    status: int,
    pauses: list[float],
) -> None:
    heard: list[RetryWait] = []
    answers = [
        httpx.Response(status, json={"title": "Busy", "status": status}, headers={"Retry-After": "3"}),
        httpx.Response(200, json=DONE),
    ]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    with Client(ENTRA, credential=StaticToken("t"), transport=transport, on_retry=heard.append) as client:
        assert list(client.stream(EVENTS)) == DONE["items"]
    assert heard == [RetryWait(3.0, f"{status} Busy", 1, 12)]
    assert pauses == [3.0]
