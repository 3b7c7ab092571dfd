# intent_ref: platform.gateway
"""A listing page with an item that is not a JSON object is UnexpectedAnswer in both clients' `iterate`, never a
shorter page; a step time that is text but not an ISO 8601 time with its offset ends `qp run --follow` in the
client's one-line refusal (exit 3), not in the parser's own message."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from quantum_platform import AsyncClient, Client, StaticToken, UnexpectedAnswer, cli

from tests.unit.test_cli import ENTRA, INTENT_ID, Platform, home, platform, qp  # noqa: F401  # fixtures

ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}
INTENT = f"/api/v1/intents/{INTENT_ID}"
ITEM = {"id": INTENT_ID, "name": "web", "version": 1}


def listing(items: list[Any]) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, json={"items": items, "next_cursor": None}))


@pytest.mark.parametrize(
    ("wrong", "says"),
    [("web", "a string"), (5, "a number"), (None, "null"), ([ITEM], "a list")],
    ids=["text", "a number", "null", "a list"],
)
def test_a_page_with_an_item_that_is_not_an_object_is_refused_by_both_clients(wrong: Any, says: str) -> None:
    message = rf"/items/1 is {says}, not an object"
    with Client("http://p", credential=StaticToken("t"), transport=listing([ITEM, wrong, ITEM])) as api:
        with pytest.raises(UnexpectedAnswer, match=message):
            list(api.intents.iterate())
        with pytest.raises(UnexpectedAnswer, match=message):
            list(api.iterate("/api/v1/intents"))

    async def walk() -> list[Any]:
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=listing([ITEM, wrong, ITEM])) as api:
            return [item async for item in api.iterate("/api/v1/intents")]

    with pytest.raises(UnexpectedAnswer, match=message):
        asyncio.run(walk())


def test_a_page_of_objects_is_walked_whole() -> None:
    with Client("http://p", credential=StaticToken("t"), transport=listing([ITEM, ITEM])) as api:
        assert list(api.iterate("/api/v1/intents")) == [ITEM, ITEM]


def followed(step: dict[str, Any]) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"{INTENT}/execute":
            return httpx.Response(202, json={"execution_id": "e-1", "status": "pending"})
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"status": "succeeded", "items": [], "next_after": 0})
        execution = {"id": "e-1", "status": "succeeded", "intent_id": INTENT_ID, "intent_version": 1}
        return httpx.Response(200, json=execution | {"steps": [{"step_id": "build", "state": "succeeded"} | step]})

    return handler


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"started_at": "yesterday"}, "started_at"),
        ({"started_at": "2025-01-05T09:30:01Z", "finished_at": "05/01/2025 09:31"}, "finished_at"),
        ({"started_at": "2025-01-05T09:30:01"}, "started_at"),
    ],
    ids=["a start that is not a time", "an end that is not a time", "a start without its offset"],
)
def test_a_followed_run_whose_step_time_is_not_an_iso_time_is_refused(
    platform: Platform, step: dict[str, Any], field: str
) -> None:
    platform.handler = followed(step)
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM, (result.output, result.exception)
    # Off a terminal the execution's id is said first, as it starts; then the refusal, one line.
    assert result.stderr.splitlines() == [
        "execution e-1 started",
        "error: GET /api/v1/executions/e-1 answered something other than an execution: "
        f"/steps/0/{field} is a string that is not an ISO 8601 time with its offset",
    ]


def test_a_followed_run_with_iso_step_times_shows_their_duration(platform: Platform) -> None:
    platform.handler = followed({"started_at": "2025-01-05T09:30:01Z", "finished_at": "2025-01-05T09:30:03.5+00:00"})
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "2.5 s" in result.stdout
