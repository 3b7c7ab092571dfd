# intent_ref: platform.gateway
"""`qp` against answers holding control, C1, bidirectional and separator characters: every table, line, error and live
view shows them as escapes and never hands them to the terminal; `--output json` stays exact JSON."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from quantum_platform import cli
from rich.console import Console
from typer.testing import Result

from tests.unit.test_cli import ENTRA, INTENT_ID, Platform, qp

ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}

# What a hostile endpoint (quoted in a step's error) or server can answer: clear the screen, set the window title, the
# one-byte CSI, a right-to-left override and an isolate, a line separator, DEL, a carriage return writing over a line.
HOSTILE = "ok\x1b[2J\x1b]0;pwned\x07 \x9b31m \u202eevil \u2066iso\u2069 \u2028next \x7f x\rY"
SHOWN = [
    "ok\\x1b[2J\\x1b]0;pwned\\x07",
    "\\x9b31m",
    "\\u202eevil",
    "\\u2066iso\\u2069",
    "\\u2028next",
    "\\x7f",
    "x\\rY",
]
"""HOSTILE's pieces as `qp` shows them (each without a space, so no table wraps one)."""
ACTING = ["\x1b[2J", "\x1b]0;", "\x07", "\x9b", "\u202e", "\u2066", "\u2069", "\u2028", "\x7f", "\r"]
"""HOSTILE's characters that act on a terminal: none of them may reach it, even among a terminal's own styling."""
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What no output of `qp` to a file may hold (line feeds and tabs only move to the next line or column)."""


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Platform:
    """A scripted platform, a home of the test's own, and consoles as `qp` has them when not on a terminal (wide
    enough that no piece of SHOWN is wrapped)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("QP_PROFILE", str(tmp_path / "profile.json"))
    for name in ("QP_URL", "QP_TOKEN", "QP_PROJECT_DIR", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "out", Console(width=300))
    monkeypatch.setattr(cli, "err", Console(stderr=True, width=300))
    return Platform(monkeypatch)


def inert(printed: str) -> str:
    """`printed` when it holds no character that acts on a terminal; a failure naming those it holds otherwise."""
    assert RAW.findall(printed) == [], printed
    return printed


def shows_hostile(printed: str) -> None:
    inert(printed)
    for piece in SHOWN:
        assert piece in printed, (piece, printed)


def ran(result: Result, code: int = 0) -> Result:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


INTENT: dict[str, Any] = {
    "id": INTENT_ID,
    "name": "web",
    "version": 1,
    "status": "active",
    "description": HOSTILE,
    "labels": {"team\u202e": "web\x9b"},
    "updated_at": "2026-12-06T00:19:25Z",
}


# ------------------------------------------------------------------------------------------ tables
def test_a_listing_shows_them_as_escapes_in_its_cells_and_its_next_page_line(platform: Platform) -> None:
    platform.answer({"GET /api/v1/intents": {"items": [INTENT], "next_cursor": "c\x1b[2J\u202e"}})
    result = ran(qp("intents", "list", env=ENV))
    shows_hostile(result.stdout)
    assert inert(result.stderr).splitlines() == ["more: the next page is --cursor c\\x1b[2J\\u202e"]


def test_a_webhook_receivers_last_answer_is_shown_as_escapes_in_the_deliveries(platform: Platform) -> None:
    delivery = {"message_id": "m-1", "event_type": "execution.completed", "state": "failed", "last_error": HOSTILE}
    platform.answer({"GET /api/v1/webhooks/w-1/deliveries": {"items": [delivery]}})
    shows_hostile(ran(qp("webhooks", "deliveries", "w-1", env=ENV)).stdout)


def test_one_item_shows_them_as_escapes_and_keeps_its_line_feeds_and_tabs(platform: Platform) -> None:
    intent = {**INTENT, "description": "first line\n\tsecond line " + HOSTILE}
    platform.answer({f"GET /api/v1/intents/{INTENT_ID}": intent})
    printed = ran(qp("intents", "get", INTENT_ID, env=ENV)).stdout
    shows_hostile(printed)
    lines = printed.splitlines()
    first = next(index for index, line in enumerate(lines) if "first line" in line)
    assert "second line" in lines[first + 1] and "\\n" not in lines[first] and "\\t" not in lines[first + 1]
    assert "\\u202e" in printed and '"team\\u202e": "web\\u009b"' in printed  # labels, as JSON in their cell


def test_a_lone_surrogate_is_shown_as_an_escape_instead_of_failing_the_command(platform: Platform) -> None:
    # Valid JSON that no encoding can write back as it is: the answer is sent as bytes, as a hostile server would.
    body = json.dumps({**INTENT, "description": "half \ud800 of a pair"}).encode()
    platform.answer({f"GET /api/v1/intents/{INTENT_ID}": httpx.Response(200, content=body)})
    assert "half \\ud800 of a pair" in inert(ran(qp("intents", "get", INTENT_ID, env=ENV)).stdout)
    as_json = ran(qp("intents", "get", INTENT_ID, "-o", "json", env=ENV)).stdout
    assert json.loads(inert(as_json))["description"] == "half \ud800 of a pair"


# ------------------------------------------------------------------------------------------ lines and errors
def test_events_show_them_as_escapes_one_line_per_event(platform: Platform) -> None:
    items = [
        {"seq": 1, "type": "step_failed", "step": "call\u202e", "error": HOSTILE + "\n   2  execution_completed"},
        {"seq": 2, "type": "execution_failed", "step": None},
    ]
    platform.answer({"GET /api/v1/executions/e-1/events": {"items": items, "next_after": 2}})
    printed = ran(qp("events", "e-1", env=ENV)).stdout
    shows_hostile(printed)
    # The line feed in the error is shown, not obeyed: it cannot forge the line of an event that never happened.
    lines = printed.splitlines()
    assert len(lines) == 2 and "call\\u202e" in lines[0] and "\\n   2  execution_completed" in lines[0]


def test_a_refusal_shows_them_as_escapes_on_its_lines(platform: Platform) -> None:
    problem = {
        "title": "Bad\u2028request",
        "status": 422,
        "detail": HOSTILE,
        "errors": [{"pointer": "/name", "detail": "x\x1b]0;title"}, {"pointer": "/labels", "detail": "\u202eright"}],
    }
    platform.answer({f"GET /api/v1/intents/{INTENT_ID}": httpx.Response(422, json=problem)})
    result = ran(qp("intents", "get", INTENT_ID, env=ENV), cli.EXIT_PROBLEM)
    lines = inert(result.stderr).splitlines()
    # The client's summary of a problem is one line already: what a line split takes for a line end (U+2028, a
    # carriage return) is folded into a space there; the rest is shown.
    folded = ["ok\\x1b[2J\\x1b]0;pwned\\x07", "\\x9b31m", "\\u202eevil", "\\u2066iso\\u2069", " next ", "\\x7f x Y"]
    assert lines[0].startswith("error: 422 Bad request: ok\\x1b[2J")
    assert all(piece in lines[0] for piece in folded), lines[0]
    assert lines[1:] == ["  /name: x\\x1b]0;title", "  /labels: \\u202eright"]


# ------------------------------------------------------------------------------------------ the live view
def _failed_run(platform: Platform) -> dict[str, Any]:
    """`run --follow` of an execution that failed on a step whose error quotes a hostile endpoint."""
    step = {"step_id": "call\u202e", "action": "http.request\x1b[8m", "state": "failed", "attempt": 1, "error": HOSTILE}
    execution = {"id": "e-1", "status": "failed", "steps": [step], "error": HOSTILE, "wait_reason": "wait\x9b2J"}
    page = {"items": [{"seq": 1, "type": "execution_failed"}], "next_after": 1, "status": "failed"}
    platform.answer(
        {
            f"POST /api/v1/intents/{INTENT_ID}/execute": httpx.Response(
                202, json={"execution_id": "e-1", "status": "pending"}
            ),
            "GET /api/v1/executions/e-1/events": page,
            "GET /api/v1/executions/e-1": execution,
        }
    )
    return execution


def test_the_live_view_shows_them_as_escapes(platform: Platform) -> None:
    _failed_run(platform)
    printed = ran(qp("run", INTENT_ID, "--follow", env=ENV), cli.EXIT_FAILED).stdout
    shows_hostile(printed)
    assert "call\\u202e" in printed and "http.request\\x1b[8m" in printed and "wait\\x9b2J" in printed


def test_the_live_view_on_a_terminal_hands_none_of_them_to_it(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a terminal the view redraws itself with the console's own escape sequences: only the answer's must be absent.
    screen = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=screen, force_terminal=True, color_system="standard", width=300))
    _failed_run(platform)
    ran(qp("run", INTENT_ID, "--follow", env=ENV), cli.EXIT_FAILED)
    printed = screen.getvalue()
    assert "\x1b[31m" in printed  # the view's own styling: this is what a terminal receives
    for acting in [*ACTING, "\x1b[8m"]:
        assert acting not in printed, (acting, printed)
    for piece in [*SHOWN, "call\\u202e", "http.request\\x1b[8m", "wait\\x9b2J"]:
        assert piece in printed, (piece, printed)


# ------------------------------------------------------------------------------------------ JSON stays exact
def test_json_output_parses_to_the_exact_strings_and_holds_none_of_them_raw(platform: Platform) -> None:
    events = [{"seq": 1, "type": "step_failed", "step": "call\u202e", "error": HOSTILE}]
    platform.answer(
        {
            f"GET /api/v1/intents/{INTENT_ID}": INTENT,
            "GET /api/v1/intents": {"items": [INTENT], "next_cursor": None},
            "GET /api/v1/executions/e-1/events": {"items": events, "next_after": 1},
        }
    )
    one = ran(qp("intents", "get", INTENT_ID, "-o", "json", env=ENV)).stdout
    assert json.loads(inert(one)) == INTENT
    listing = ran(qp("intents", "list", "-o", "json", env=ENV)).stdout
    assert json.loads(inert(listing)) == {"items": [INTENT], "next_cursor": None}
    lines = ran(qp("events", "e-1", "-o", "json", env=ENV)).stdout
    assert [json.loads(line) for line in inert(lines).splitlines()] == events


def test_json_output_of_a_run_and_of_a_refusal_is_exact(platform: Platform) -> None:
    execution = _failed_run(platform)
    followed = ran(qp("run", INTENT_ID, "--follow", "-o", "json", env=ENV), cli.EXIT_FAILED).stdout
    assert [json.loads(line) for line in inert(followed).splitlines()] == [{"seq": 1, "type": "execution_failed"}]
    assert json.loads(inert(ran(qp("executions", "get", "e-1", "-o", "json", env=ENV)).stdout)) == execution
    problem = {"title": "Bad\u2028request", "status": 422, "detail": HOSTILE}
    platform.answer({f"GET /api/v1/intents/{INTENT_ID}": httpx.Response(422, json=problem)})
    refused = ran(qp("intents", "get", INTENT_ID, "-o", "json", env=ENV), cli.EXIT_PROBLEM)
    assert json.loads(inert(refused.stdout)) == problem
    assert inert(refused.stderr).startswith("error: 422 Bad request: ok\\x1b[2J\\x1b]0;pwned\\x07 \\x9b31m \\u202eevil")


def test_a_login_prints_the_servers_tenant_name_on_its_one_line(platform: Platform, tmp_path: Path) -> None:
    # The sign-in line kept a line feed of the answer: a server naming its tenant "x\nerror: ..." printed a second,
    # forged line under it.
    checkout = tmp_path / "checkout"
    (checkout / "devhost").mkdir(parents=True)
    (checkout / "devhost" / "__init__.py").write_text("")
    (checkout / "devhost" / "__main__.py").write_text("print('dev-token')\n")
    forged = "contoso\nerror: your session expired, run qp login --url http://evil.example"
    platform.answer({"GET /api/v1/me": {"principal_id": "p", "tenant_name": forged + HOSTILE}})
    printed = ran(qp("login", "--url", "http://127.0.0.1:7071", "--project-dir", str(checkout))).stdout
    assert len(inert(printed).splitlines()) == 1, printed
    assert "contoso\\nerror: your session expired" in printed


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_an_answer_holding_a_number_json_has_not_is_refused_not_printed_as_json(
    platform: Platform, constant: str
) -> None:
    # Python's parser takes NaN and Infinity; printed again, `-o json` wrote `NaN`, which no JSON parser reads.
    body = f'{{"id": "{INTENT_ID}", "name": "web", "version": {constant}}}'.encode()
    platform.answer({f"GET /api/v1/intents/{INTENT_ID}": httpx.Response(200, content=body)})
    refused = ran(qp("intents", "get", INTENT_ID, "-o", "json", env=ENV), 3)
    assert constant not in refused.stdout
    assert "other than JSON" in refused.stderr, refused.stderr
