# intent_ref: platform.gateway
"""`qp` shows every problem of a refusal (and the problem document with `-o json`), tells usage errors apart from a
cancelled run by their exit code, and `devhost token` refuses to mint a token no call would accept."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from quantum_platform import cli
from quantum_platform.errors import ValidationFailed

from devhost import cli as devhost_cli
from tests.unit.test_cli import ENTRA, INTENT_ID, Platform, home, platform, qp  # noqa: F401  # fixtures

ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}
PROBLEM: dict[str, Any] = {
    "type": "https://quantum-platform.dev/problems/intent-invalid",
    "title": "Unprocessable content",
    "status": 422,
    "detail": "The intent has 3 problems.",
    "errors": [
        {"pointer": "/definition", "detail": "a step needs an action", "code": "required"},
        {"pointer": "/definition/steps/1/action", "detail": "unknown action [bogus]", "code": "unknown_action"},
        {"pointer": "/name", "detail": "must match ^[a-z0-9-]+$", "code": "pattern"},
    ],
}
PROBLEM_LINES = [
    "error: 422 Unprocessable content: The intent has 3 problems.",  # the first problem once, in the list below
    "  /definition: a step needs an action",
    "  /definition/steps/1/action: unknown action [bogus]",
    "  /name: must match ^[a-z0-9-]+$",
]


@pytest.fixture
def definition(home: Path) -> Path:
    file = home / "intent.json"
    file.write_text(json.dumps({"name": "Bad Name", "definition": {"steps": [{}, {"action": "bogus"}]}}))
    return file


def _refused(platform: Platform) -> None:
    platform.answer(
        {
            "POST /api/v1/intents/validate": httpx.Response(422, json=PROBLEM),
            "POST /api/v1/intents": httpx.Response(422, json=PROBLEM),
            "GET /api/v1/intents": {"items": [{"id": INTENT_ID, "name": "web"}]},
            f"GET /api/v1/intents/{INTENT_ID}": httpx.Response(200, json={"id": INTENT_ID}, headers={"ETag": '"1"'}),
            f"PUT /api/v1/intents/{INTENT_ID}": httpx.Response(422, json=PROBLEM),
        }
    )


# ------------------------------------------------------------------------------------------ every problem shown
@pytest.mark.parametrize(
    "command", [("intents", "validate"), ("intents", "create"), ("intents", "update", "web")], ids=" ".join
)
def test_every_problem_is_a_line_of_its_own_after_the_summary(
    platform: Platform, definition: Path, command: tuple[str, ...]
) -> None:
    _refused(platform)
    result = qp(*command, str(definition), "--output", "table", env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM, (result.output, result.exception)
    assert result.stderr.splitlines() == PROBLEM_LINES
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command", [("intents", "validate"), ("intents", "create"), ("intents", "update", "web")], ids=" ".join
)
def test_with_output_json_the_problem_document_is_printed_on_stdout(
    platform: Platform, definition: Path, command: tuple[str, ...]
) -> None:
    _refused(platform)
    result = qp(*command, str(definition), "-o", "json", env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM, (result.output, result.exception)
    assert json.loads(result.stdout) == PROBLEM
    assert result.stderr.splitlines() == PROBLEM_LINES


def test_a_refusal_without_field_errors_prints_its_document_as_json_too(platform: Platform) -> None:
    problem = {"title": "Not found", "status": 404, "detail": "No execution e-1."}
    platform.answer({"GET /api/v1/executions/e-1": httpx.Response(404, json=problem)})
    result = qp("executions", "get", "e-1", "--output", "json", env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM
    assert json.loads(result.stdout) == problem
    assert result.stderr.splitlines() == ["error: 404 Not found: No execution e-1."]


def test_the_sdk_error_lists_each_problem() -> None:
    error = ValidationFailed(422, PROBLEM)
    assert error.problems == [line.strip() for line in PROBLEM_LINES[1:]]
    # The library's one line names the first problem: its callers have no list below it.
    assert str(error) == PROBLEM_LINES[0].removeprefix("error: ") + " (/definition: a step needs an action)"


# ------------------------------------------------------------------------------------------ an update's ETag
@pytest.mark.parametrize("etag", ['"w.v1"', None], ids=["with an ETag", "without one"])
def test_intents_update_sends_the_etag_it_read_and_without_one_sends_nothing(
    platform: Platform, definition: Path, etag: str | None
) -> None:
    """The update route requires If-Match: `qp intents update` sends the ETag of the version it read, and an answer
    without one ends in one clear line (exit 3) before any PUT. Before, the PUT went out without If-Match (a 428)."""
    item = f"/api/v1/intents/{INTENT_ID}"
    updated = {"id": INTENT_ID, "name": "web", "version": 2}
    read = httpx.Response(200, json={"id": INTENT_ID}, headers={"ETag": etag} if etag else None)
    platform.answer({f"GET {item}": read, f"PUT {item}": updated})
    result = qp("intents", "update", INTENT_ID, str(definition), "--output", "json", env=ENV)
    puts = [request.headers.get("If-Match") for request in platform.seen if request.method == "PUT"]
    if etag:
        assert puts == [etag]
        assert result.exit_code == 0 and json.loads(result.stdout) == updated, result.output
    else:
        assert puts == []
        assert result.exit_code == cli.EXIT_PROBLEM, (result.output, result.exception)
        assert result.stderr.splitlines() == [
            f"error: GET {item} answered no ETag, which an update needs to send as If-Match"
        ]


# ------------------------------------------------------------------------------------------ usage errors
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "x", "--folow"], "No such option: --folow"),
        (["run"], "Missing argument"),
        (["intents", "list", "--output", "xml"], "Invalid value for '--output'"),
    ],
)
def test_a_usage_error_exits_64_not_the_code_of_a_cancelled_run(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == cli.EXIT_USAGE == 64
    assert exited.value.code not in (cli.EXIT_CANCELLED, cli.EXIT_FAILED, cli.EXIT_PROBLEM)
    printed = capsys.readouterr()
    usage = printed.err.splitlines()[0]
    assert says in printed.err and f" {args[0]} " in usage and "[OPTIONS]" in usage
    assert printed.out == ""


def test_help_still_exits_0(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--help"])
    assert exited.value.code == 0
    assert "--follow" in capsys.readouterr().out


def test_a_command_keeps_its_own_exit_code(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    platform.answer({"GET /api/v1/intents": {"items": []}})
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "nothing"])
    assert exited.value.code == cli.EXIT_PROBLEM


def test_the_installed_qp_exits_64_on_a_usage_error(home: Path) -> None:
    qp_program = Path(sys.executable).with_name("qp")
    done = subprocess.run(
        [str(qp_program), "run", "x", "--folow"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 64, (done.stdout, done.stderr)
    assert "No such option: --folow" in done.stderr


# ------------------------------------------------------------------------------------------ devhost token
def test_a_token_without_a_role_or_scope_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert devhost_cli.main(["token", "--tenant", "contoso", "--data-dir", str(tmp_path)]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert "needs at least one role (--roles) or scope (--scopes)" in printed.err


def test_a_token_for_a_tenant_that_is_neither_a_demo_name_nor_a_guid_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["token", "--tenant", "nosuch", "--roles", "Intent.Reader", "--data-dir", str(tmp_path)]
    assert devhost_cli.main(args) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert "'nosuch' is neither a demo tenant (contoso, fabrikam, tenant-123) nor an Entra tenant GUID" in printed.err


@pytest.mark.parametrize(
    "args",
    [
        ["--tenant", "Contoso", "--roles", "Intent.Reader"],
        ["--tenant", "tenant-123", "--scopes", "user_impersonation"],
        ["--tenant", "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "--roles", "Tenant.Admin"],
    ],
)
def test_a_usable_token_is_still_minted(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert devhost_cli.main(["token", *args, "--data-dir", str(tmp_path)]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims.get("roles") or claims.get("scp")
    uuid.UUID(claims["tid"])


# ------------------------------------------------------------------ a problem among JSON lines of events
GONE: dict[str, Any] = {"type": "about:blank", "title": "Not found", "status": 404, "detail": "No execution e-1."}
STARTED = {"type": "execution_started", "seq": 1, "step": None}


def _events_then_gone(platform: Platform) -> None:
    """The first page of e-1's events holds one, the next is refused: a refusal after some event lines went out."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == f"/api/v1/intents/{INTENT_ID}/execute":
            return httpx.Response(202, json={"execution_id": "e-1", "status": "pending"})
        if path == "/api/v1/executions/e-1/events" and request.url.params.get("after") == "0":
            return httpx.Response(200, json={"items": [STARTED], "next_after": 1})
        return httpx.Response(404, json=GONE)

    platform.handler = handler


@pytest.mark.parametrize(
    "command",
    [("events", "e-1"), ("events", "e-1", "--follow"), ("run", INTENT_ID, "--follow")],
    ids=" ".join,
)
def test_with_output_json_a_json_lines_command_prints_its_problem_on_stderr(
    platform: Platform, command: tuple[str, ...]
) -> None:
    # Its stdout is events, one per line, which a script filters by `type`: a problem there (it has a `type` too)
    # would read as one more event.
    _events_then_gone(platform)
    result = qp(*command, "-o", "json", env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM, (result.output, result.exception)
    assert [json.loads(line) for line in result.stdout.splitlines()] == [STARTED]
    document, summary = result.stderr.splitlines()
    assert json.loads(document) == GONE
    assert summary == "error: 404 Not found: No execution e-1."


def test_run_without_follow_still_prints_its_problem_on_stdout(platform: Platform) -> None:
    platform.answer({f"POST /api/v1/intents/{INTENT_ID}/execute": httpx.Response(404, json=GONE)})
    result = qp("run", INTENT_ID, "-o", "json", env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM, (result.output, result.exception)
    assert json.loads(result.stdout) == GONE
    assert result.stderr.splitlines() == ["error: 404 Not found: No execution e-1."]
