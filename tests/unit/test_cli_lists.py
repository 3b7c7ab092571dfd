# intent_ref: platform.gateway
"""`qp`'s listings against a scripted platform: a page says there is a next one, `--cursor`, `--limit` and `--all`
page on, `qp events` reads every page, and ids in a table are never cut."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from quantum_platform import cli
from rich.console import Console

from tests.unit.test_cli import ENTRA, INTENT_ID, Platform, qp

ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Platform:
    """A scripted platform, a home of the test's own, and consoles as `qp` has them when not on a terminal."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("QP_PROFILE", str(tmp_path / "profile.json"))
    for name in ("QP_URL", "QP_TOKEN", "QP_PROJECT_DIR", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "out", Console(width=200))
    monkeypatch.setattr(cli, "err", Console(stderr=True, width=80))
    return Platform(monkeypatch)


def execution(n: int) -> dict[str, Any]:
    return {
        "id": f"{n:08d}-0d57-40aa-8b2c-123456789012",
        "intent_id": INTENT_ID,
        "intent_version": 1,
        "status": "succeeded",
        "target": "staging",
        "created_at": "2026-12-06T00:19:25.955000Z",
    }


def paged(items: list[dict[str, Any]], size: int) -> Any:
    """A listing of `items` answered `size` at a time (or `limit` when asked), each page naming the next by cursor."""

    def handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("cursor", "0"))
        limit = int(request.url.params.get("limit", str(size)))
        following = str(start + limit) if start + limit < len(items) else None
        return httpx.Response(200, json={"items": items[start : start + limit], "next_cursor": following})

    return handler


def test_a_listing_with_more_pages_names_the_next_cursor_and_all_reads_every_page(platform: Platform) -> None:
    executions = [execution(n) for n in range(120)]
    platform.handler = paged(executions, 50)
    first = qp("executions", "list", env=ENV)
    assert first.exit_code == 0, (first.output, first.exception)
    assert first.stderr == "more: the next page is --cursor 50\n"
    assert executions[49]["id"] in first.stdout and executions[50]["id"] not in first.stdout

    following = qp("executions", "list", "--cursor", "100", "--limit", "10", "--status", "succeeded", env=ENV)
    assert following.exit_code == 0 and following.stderr == "more: the next page is --cursor 110\n"
    assert dict(platform.seen[-1].url.params) == {"status": "succeeded", "limit": "10", "cursor": "100"}

    platform.seen.clear()
    every = qp("executions", "list", "--all", "--output", "json", env=ENV)
    assert every.exit_code == 0 and every.stderr == ""
    assert json.loads(every.stdout) == {"items": executions, "next_cursor": None}
    assert [r.url.params.get("cursor") for r in platform.seen] == [None, "50", "100"]
    table = qp("executions", "list", "--all", env=ENV)
    assert table.stderr == "" and all(item["id"] in table.stdout for item in executions)

    # The last page says nothing more; json output carries next_cursor itself.
    platform.handler = paged(executions[:3], 50)
    assert qp("executions", "list", env=ENV).stderr == ""
    platform.handler = paged(executions, 50)
    assert json.loads(qp("executions", "list", "-o", "json", env=ENV).stdout)["next_cursor"] == "50"


def test_intents_list_pages_with_its_filters(platform: Platform) -> None:
    intents = [{"id": f"{n:08d}-d9cb-469f-a165-70867728950e", "name": f"web-{n:03d}"} for n in range(60)]
    platform.handler = paged(intents, 50)
    first = qp("intents", "list", "--name-prefix", "web", "--label", "team:web", "--label", "tier:1", env=ENV)
    assert first.exit_code == 0, (first.output, first.exception)
    assert first.stderr == "more: the next page is --cursor 50\n"
    assert platform.seen[-1].url.params.multi_items() == [
        ("name_prefix", "web"),
        ("label", "team:web"),
        ("label", "tier:1"),
    ]
    every = qp("intents", "list", "--all", "-o", "json", env=ENV)
    assert [item["name"] for item in json.loads(every.stdout)["items"]] == [item["name"] for item in intents]


def test_an_intent_named_on_a_later_page_is_found(platform: Platform) -> None:
    intents = [{"id": f"{n:08d}-d9cb-469f-a165-70867728950e", "name": f"web-{n:03d}"} for n in range(60)]
    lookup = paged(intents, 50)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/intents":
            return lookup(request)
        return httpx.Response(200, json={"id": request.url.path.rsplit("/", 1)[-1], "name": "web-055"})

    platform.handler = handler
    found = qp("intents", "get", "web-055", "-o", "json", env=ENV)
    assert found.exit_code == 0, (found.output, found.exception)
    assert platform.seen[-1].url.path == f"/api/v1/intents/{intents[55]['id']}"


def test_events_without_follow_read_every_page(platform: Platform) -> None:
    recorded = [{"seq": n, "type": "step_completed", "step": f"s{n}"} for n in range(1, 251)]

    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["after"])
        items = recorded[after : after + 100]
        return httpx.Response(200, json={"items": items, "next_after": items[-1]["seq"] if items else after})

    platform.handler = handler
    result = qp("events", "e-1", "-o", "json", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == list(range(1, 251))
    assert [r.url.params["after"] for r in platform.seen] == ["0", "100", "200", "250"]
    assert len(qp("events", "e-1", "--after", "240", env=ENV).stdout.splitlines()) == 10


@pytest.mark.parametrize("width", [80, 100, 140])
def test_ids_in_a_listing_are_never_cut(platform: Platform, monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    monkeypatch.setattr(cli, "out", Console(width=width))
    item = execution(7) | {"intent_id": INTENT_ID}
    platform.answer({"GET /api/v1/executions": {"items": [item], "next_cursor": None}})
    result = qp("executions", "list", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert item["id"] in result.stdout and INTENT_ID in result.stdout
    assert "succeeded" in result.stdout or "succeed…" in result.stdout  # the other columns are still there
    # An intent's name is an argument of other commands too: it is not cut either.
    name = "nightly-deployment-of-the_webshop-eu"
    platform.answer({"GET /api/v1/intents": {"items": [{"id": INTENT_ID, "name": name, "description": "x " * 60}]}})
    listed = qp("intents", "list", env=ENV).stdout
    assert INTENT_ID in listed and name in listed
    deliveries = {"items": [{"message_id": "msg_2bd64ea3adc231a038737f9cd41f7a1b", "event_type": "execution.failed"}]}
    platform.answer({"GET /api/v1/webhooks/w-1/deliveries": deliveries})
    assert "msg_2bd64ea3adc231a038737f9cd41f7a1b" in qp("webhooks", "deliveries", "w-1", env=ENV).stdout
