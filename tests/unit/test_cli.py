# intent_ref: platform.gateway
"""`qp` against a scripted platform (tokens, text, refusals, login) and the example webhook receiver's limits."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from quantum_platform import Client, cli
from rich.console import Console
from typer.testing import CliRunner, Result

Handler = Callable[[httpx.Request], httpx.Response]
ENTRA = "https://qp.contoso.example"
INTENT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


class Platform:
    """What the CLI's clients send, answered by `handler` (every client `qp` opens goes here)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[httpx.Request] = []
        self.handler: Handler = lambda request: httpx.Response(404, json={"title": "Not found", "status": 404})

        def scripted(url: str, **kwargs: Any) -> Any:
            return Client(url, transport=httpx.MockTransport(self._handle), **kwargs)

        monkeypatch.setattr(cli, "Client", scripted)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.handler(request)

    def answer(self, routes: dict[str, Any]) -> None:
        """Answer `"METHOD /path"` with a response, or with JSON (200)."""

        def handler(request: httpx.Request) -> httpx.Response:
            found = routes.get(f"{request.method} {request.url.path}")
            if found is None:
                return httpx.Response(404, json={"title": "Not found", "status": 404})
            return found if isinstance(found, httpx.Response) else httpx.Response(200, json=found)

        self.handler = handler


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of the test's own (no real login is read or written), no token or URL from the environment, and
    consoles as `qp` has them when its output is not a terminal (stderr 80 columns)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("QP_PROFILE", str(tmp_path / ".config" / "qp" / "profile.json"))
    for name in ("QP_URL", "QP_TOKEN", "QP_PROJECT_DIR", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "out", Console(width=200))
    monkeypatch.setattr(cli, "err", Console(stderr=True, width=80))
    return tmp_path


@pytest.fixture
def platform(home: Path, monkeypatch: pytest.MonkeyPatch) -> Platform:  # noqa: ARG001  # the home comes first
    return Platform(monkeypatch)


def qp(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.app, list(args), env=env)


def profile_path() -> Path:
    return Path(os.environ["QP_PROFILE"])


def save_profile(profile: dict[str, Any]) -> bytes:
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile), encoding="utf-8")
    return path.read_bytes()


def refusal(result: Result) -> str:
    """The one line a refusal prints: exit 3, no traceback, a single `error:` line on stderr."""
    assert result.exit_code == cli.EXIT_PROBLEM, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ a token for its URL only
def test_a_saved_token_is_sent_only_to_the_url_it_was_saved_for(platform: Platform) -> None:
    save_profile({"url": ENTRA, "token": "entra-token", "expires_on": time.time() + 3600, "tenant": None})
    platform.answer({"GET /api/v1/intents": {"items": []}})

    elsewhere = qp("intents", "list", env={"QP_URL": "https://attacker.example"})
    assert "not signed in to https://attacker.example" in refusal(elsewhere)
    assert platform.seen == []  # nothing at all went to the other host

    same = qp("intents", "list", env={"QP_URL": ENTRA + "/"})  # the same URL, spelled with a trailing slash
    assert same.exit_code == 0, same.output
    assert [(r.url.host, r.headers["Authorization"]) for r in platform.seen] == [
        ("qp.contoso.example", "Bearer entra-token")
    ]


# ------------------------------------------------------------------------------------------ server text as text
def test_a_name_that_looks_like_markup_is_printed_as_written(platform: Platform) -> None:
    platform.answer({"GET /api/v1/intents": {"items": []}})
    result = qp("intents", "get", "[/x]", env={"QP_TOKEN": "t", "QP_URL": ENTRA})
    assert refusal(result) == "error: no intent named '[/x]' in this tenant"


def test_a_listing_shows_descriptions_that_look_like_markup(platform: Platform) -> None:
    item = {"id": INTENT_ID, "name": "[bold]web", "version": 1, "status": "active", "description": "see [/x] :fire:"}
    platform.answer({"GET /api/v1/intents": {"items": [item]}})
    result = qp("intents", "list", env={"QP_TOKEN": "t", "QP_URL": ENTRA})
    assert result.exit_code == 0, (result.output, result.exception)
    assert "[bold]web" in result.stdout and "see [/x] :fire:" in result.stdout


def test_events_show_a_step_error_that_looks_like_markup(platform: Platform) -> None:
    error = "GET https://api.example/[/api] answered 500: [bold]down[/]"
    page = {"items": [{"seq": 7, "type": "step_failed", "step": "call", "error": error}], "next_after": 7}
    platform.answer({"GET /api/v1/executions/e-1/events": page})
    table = qp("events", "e-1", env={"QP_TOKEN": "t", "QP_URL": ENTRA})
    assert table.exit_code == 0, (table.output, table.exception)
    assert error in table.stdout and len(table.stdout.splitlines()) == 1
    as_json = qp("events", "e-1", "--output", "json", env={"QP_TOKEN": "t", "QP_URL": ENTRA})
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == page["items"]


def test_a_validation_error_keeps_its_brackets_on_one_line_at_80_columns(platform: Platform, home: Path) -> None:
    pattern = "must match ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ and be at most 63 characters long, which it is not"
    problem = {
        "title": "Unprocessable content",
        "status": 422,
        "detail": "The intent has 1 problem.",
        "errors": [{"pointer": "/name", "detail": pattern}],
    }
    platform.answer({"POST /api/v1/intents": httpx.Response(422, json=problem)})
    file = home / "intent.json"
    file.write_text(json.dumps({"name": "Not Valid", "definition": {"steps": []}}))
    line = refusal(qp("intents", "create", str(file), env={"QP_TOKEN": "t", "QP_URL": ENTRA}))
    assert line == f"error: 422 Unprocessable content: The intent has 1 problem. (/name: {pattern})"
    assert len(line) > 80


def test_the_live_view_shows_step_ids_and_actions_that_look_like_markup() -> None:
    step = {"step_id": "[/step]", "action": "[bold]call", "state": "failed", "attempt": 1}
    console = Console(record=True, width=200)
    console.print(cli._view({"id": "e-1", "status": "failed [/s]", "steps": [step]}))
    shown = console.export_text()
    assert "[/step]" in shown and "[bold]call" in shown and "failed [/s]" in shown


# ------------------------------------------------------------------------------------------ one line, exit 3
@pytest.mark.parametrize(
    "raised", [httpx.ConnectError("[Errno 111] Connection refused"), httpx.ReadTimeout("timed out")]
)
def test_an_unreachable_platform_is_one_line_and_exit_3_not_a_failed_run(
    platform: Platform, raised: httpx.TransportError, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("quantum_platform.client.time.sleep", slept.append)  # the client's backoff, not waited out

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise raised

    def found_then_unreachable(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"items": [{"id": INTENT_ID, "name": "web"}]})
        return unreachable(request)

    platform.handler = found_then_unreachable
    env = {"QP_TOKEN": "t", "QP_URL": ENTRA}
    result = qp("run", "web", "--follow", env=env)  # exit 1 would read as "the execution failed"
    assert result.exit_code == cli.EXIT_PROBLEM, (result.exit_code, result.output, result.exception)
    *waits, line = result.stderr.splitlines()
    assert f"POST {ENTRA}/api/v1/intents/{INTENT_ID}/execute failed: {raised}" in line
    # Each of the client's waits is said on stderr as it begins (a 429 can hold a command for minutes).
    name = type(raised).__name__
    assert waits == [f"waiting {s} s: {name} (retry {n} of 4)" for n, s in enumerate(["0.5", "1", "2", "4"], 1)]
    # The start was tried again with its one key (it may have run), four times, then refused.
    keys = [r.headers["Idempotency-Key"] for r in platform.seen if r.method == "POST"]
    assert len(keys) == 5 and len(set(keys)) == 1 and len(slept) == 4
    platform.handler = unreachable
    failed = f"error: GET {ENTRA}/api/v1/intents failed: {raised} ({type(raised).__name__})"
    listed = qp("intents", "list", env=env)
    assert listed.exit_code == cli.EXIT_PROBLEM and listed.stderr.splitlines() == [*waits, failed]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"{not json", "is not JSON"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b'["ab"]', "must hold a JSON object ({...}), not a list"),
        (b'"x"', "must hold a JSON object ({...}), not a str"),
    ],
)
def test_a_bad_input_file_is_one_line_naming_it_and_sends_nothing(
    platform: Platform, home: Path, content: bytes, says: str
) -> None:
    file = home / "input.json"
    file.write_bytes(content)
    env = {"QP_TOKEN": "t", "QP_URL": ENTRA}
    assert f"error: {file} {says}" in refusal(qp("intents", "create", str(file), env=env))
    assert f"error: {file} {says}" in refusal(qp("run", INTENT_ID, "--input", str(file), env=env))
    assert platform.seen == []


def _forbidden(action: str, reason: str, detail: str | None = None) -> httpx.Response:
    """A refusal as the API answers it: a generic detail unless given, the cause only in `reason`."""
    problem = {
        "type": "https://quantum-platform.dev/problems/forbidden",
        "title": "Forbidden",
        "status": 403,
        "detail": detail or f"Not allowed to {action}.",
        "instance": "/api/v1/x",
        "reason": reason,
        "request_id": "r-1",
    }
    return httpx.Response(403, json=problem, headers={"Content-Type": "application/problem+json"})


def test_a_refusal_says_its_reason(platform: Platform) -> None:
    execution = "6a1f0c2e-8f3b-4a39-9c0d-2d1e7c4b5a60"
    platform.answer(
        {
            "GET /api/v1/intents": {"items": [{"id": INTENT_ID, "name": "deploy-web-app"}]},
            f"POST /api/v1/intents/{INTENT_ID}/execute": _forbidden("intent.execute", "production_requires_deployer"),
            f"POST /api/v1/executions/{execution}/approvals/approve": _forbidden("execution.approve", "self_approval"),
        }
    )
    env = {"QP_TOKEN": "t", "QP_URL": ENTRA}
    assert refusal(qp("run", "deploy-web-app", env=env)) == (
        "error: 403 Forbidden: Not allowed to intent.execute. (reason: production_requires_deployer)"
    )
    assert refusal(qp("executions", "approve", execution, "approve", env=env)) == (
        "error: 403 Forbidden: Not allowed to execution.approve. (reason: self_approval)"
    )


def test_a_refusal_whose_detail_names_its_reason_says_it_once(platform: Platform) -> None:
    detail = "Not allowed to intent.execute: the tenant policy names production_requires_deployer."
    platform.answer(
        {
            "GET /api/v1/intents": {"items": [{"id": INTENT_ID, "name": "web"}]},
            f"POST /api/v1/intents/{INTENT_ID}/execute": _forbidden(
                "intent.execute", "production_requires_deployer", detail
            ),
        }
    )
    assert refusal(qp("run", "web", env={"QP_TOKEN": "t", "QP_URL": ENTRA})) == f"error: 403 Forbidden: {detail}"


# ------------------------------------------------------------------------------------------ intents by id or name
def test_an_intent_name_shaped_like_a_uuid_is_looked_up_by_name(platform: Platform) -> None:
    name = "nightly-deployment-of-the_webshop-eu"  # 36 characters, 4 dashes: a name, not an id
    assert len(name) == 36 and name.count("-") == 4
    platform.answer(
        {
            "GET /api/v1/intents": {"items": [{"id": INTENT_ID, "name": name}]},
            f"GET /api/v1/intents/{INTENT_ID}": {"id": INTENT_ID, "name": name},
        }
    )
    env = {"QP_TOKEN": "t", "QP_URL": ENTRA}
    assert qp("intents", "get", name, "--output", "json", env=env).exit_code == 0
    assert [r.url.path for r in platform.seen] == ["/api/v1/intents", f"/api/v1/intents/{INTENT_ID}"]
    platform.seen.clear()
    assert qp("intents", "get", INTENT_ID, "--output", "json", env=env).exit_code == 0
    assert [r.url.path for r in platform.seen] == [f"/api/v1/intents/{INTENT_ID}"]  # an id is used as it is


# ------------------------------------------------------------------------------------------ login
@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A platform checkout whose `python -m devhost token` prints a fixed dev token."""
    root = tmp_path / "checkout"
    (root / "devhost").mkdir(parents=True)
    (root / "devhost" / "__init__.py").write_text("")
    (root / "devhost" / "__main__.py").write_text("print('dev-token')\n")
    return root


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder: not the checkout, nor under it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_a_failed_login_leaves_the_working_one_in_place(platform: Platform, checkout: Path, elsewhere: Path) -> None:
    working = save_profile({"url": ENTRA, "token": "entra-token", "expires_on": time.time() + 3600, "tenant": None})
    platform.answer({"GET /api/v1/me": httpx.Response(401, json={"title": "Unauthorized", "status": 401})})
    local = "http://127.0.0.1:7071"
    assert refusal(qp("login", "--url", local, "--project-dir", str(checkout))).startswith("error: 401")
    assert profile_path().read_bytes() == working
    assert [r.headers["Authorization"] for r in platform.seen] == ["Bearer dev-token"] * 2  # renewed once


def test_a_login_is_saved_0600_from_its_creation_once_it_works(
    platform: Platform, checkout: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    working = save_profile({"url": ENTRA, "token": "entra-token", "expires_on": time.time() + 3600, "tenant": None})
    platform.answer({"GET /api/v1/me": {"principal_id": "dev-user", "tenant_name": "contoso"}})
    replaced: list[tuple[int, bytes]] = []
    os_replace = os.replace

    def replace(source: Any, target: Any) -> None:
        # When the new profile takes the old one's place, it is already readable by its owner only.
        replaced.append((os.stat(source).st_mode & 0o777, Path(target).read_bytes()))
        os_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    umask = os.umask(0o022)  # what most shells have: a file created plainly would be 0644
    try:
        result = qp("login", "--url", "http://127.0.0.1:7071", "--tenant", "contoso", "--project-dir", str(checkout))
    finally:
        os.umask(umask)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout == "signed in to http://127.0.0.1:7071 as dev-user (contoso)\n"
    assert replaced == [(0o600, working)]
    assert profile_path().stat().st_mode & 0o777 == 0o600
    saved = json.loads(profile_path().read_text())
    assert saved["url"] == "http://127.0.0.1:7071" and saved["project"] == str(checkout.resolve())
    assert [p.name for p in profile_path().parent.iterdir()] == ["profile.json"]  # no temporary file left


def test_a_login_from_another_folder_keeps_the_checkout_or_saves_nothing(
    platform: Platform, checkout: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform.answer({"GET /api/v1/me": {"principal_id": "dev-user", "tenant_name": "contoso"}})
    local = "http://127.0.0.1:7071"
    save_profile({"url": local, "tenant": "contoso", "project": str(checkout)})
    assert qp("login", "--url", local, "--tenant", "fabrikam").exit_code == 0
    saved = json.loads(profile_path().read_text())
    assert saved["project"] == str(checkout.resolve()) and saved["tenant"] == "fabrikam"
    # A later command, still from elsewhere, mints in the checkout.
    platform.answer({"GET /api/v1/intents": {"items": []}})
    assert qp("intents", "list").exit_code == 0
    assert platform.seen[-1].headers["Authorization"] == "Bearer dev-token"

    # No checkout anywhere (not here, not in the profile, not where the package is installed): nothing is saved.
    profile_path().unlink()
    monkeypatch.setattr(cli, "__file__", str(elsewhere / "site-packages" / "quantum_platform" / "cli.py"))
    platform.seen.clear()
    assert "cannot find the platform's checkout" in refusal(qp("login", "--url", local))
    assert not profile_path().exists() and platform.seen == []


def test_an_entra_login_without_the_azure_extra_is_one_line_naming_it(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # what `import azure.identity` meets without the extra
    line = refusal(qp("login", "--url", ENTRA, "--entra-tenant", "t-1"))
    assert "pip install 'quantum-platform-client[azure]'" in line
    assert platform.seen == [] and not profile_path().exists()


def test_a_refused_entra_sign_in_is_one_line_and_exit_3(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    class DeviceCodeCredential:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def get_token(self, *scopes: str) -> Any:
            raise ClientAuthenticationError("DeviceCodeCredential: AADSTS70016: the user did not sign in\nin time")

    monkeypatch.setitem(sys.modules, "azure.identity", types.SimpleNamespace(DeviceCodeCredential=DeviceCodeCredential))
    line = refusal(qp("login", "--url", ENTRA))
    assert line == "error: DeviceCodeCredential: AADSTS70016: the user did not sign in in time"
    assert platform.seen == [] and not profile_path().exists()


def test_a_login_whose_caller_is_of_another_shape_saves_nothing(
    platform: Platform, checkout: Path, elsewhere: Path
) -> None:
    platform.answer({"GET /api/v1/me": {"principal_id": 7, "tenant_name": "contoso"}})
    line = refusal(qp("login", "--url", "http://127.0.0.1:7071", "--project-dir", str(checkout)))
    assert line == (
        "error: GET /api/v1/me answered something other than the signed-in caller: /principal_id is a number, "
        "not a string"
    )
    assert not profile_path().exists()


def test_a_local_login_with_an_oid_signs_in_as_that_user_from_then_on(platform: Platform, tmp_path: Path) -> None:
    """`--oid` names the user the devhost's dev tokens carry (a second user, e.g. to approve another's run); the
    tokens are minted by the checkout's real devhost."""
    checkout, data = Path(__file__).resolve().parents[2], tmp_path / "data"
    oid = "5b2f6a9e-1c3d-4e8f-9a0b-7c6d5e4f3a21"
    platform.answer(
        {"GET /api/v1/me": {"principal_id": "p", "tenant_name": "contoso"}, "GET /api/v1/intents": {"items": []}}
    )
    login = ["login", "--url", "http://127.0.0.1:7071", "--project-dir", str(checkout), "--data-dir", str(data)]
    signed_in = qp(*login, "--oid", oid)
    assert signed_in.exit_code == 0, (signed_in.output, signed_in.exception)
    assert qp("intents", "list", "-o", "json").exit_code == 0  # a later command: the saved user
    assert qp(*login).exit_code == 0  # without --oid: the devhost's demo user again

    def oid_of(request: httpx.Request) -> str:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        return str(jwt.decode(token, options={"verify_signature": False})["oid"])

    oids = [oid_of(request) for request in platform.seen]
    assert oids[:2] == [oid, oid] and oids[2] != oid


# ------------------------------------------------------------------------------------------ the example receiver
@pytest.fixture
def receiver() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    from examples.webhooks.receiver import make_server

    got: list[dict[str, Any]] = []
    server = make_server("whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 0, got.append, timeout_s=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, got
    server.shutdown()
    server.server_close()


def _post(port: int, head: str, body: bytes = b"", *, wait_s: float = 5.0) -> bytes:
    """A raw POST (its headers as given, even invalid ones); what the receiver answered, b"" if it hung up."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as conn:
        conn.sendall(f"POST /hooks HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
        try:
            return conn.recv(1024)
        except TimeoutError:
            return b"(no answer)"


@pytest.mark.parametrize("length", ["-1", "abc", " 5_0", str(2 * 1024 * 1024), "²"])
def test_the_example_receiver_refuses_a_content_length_it_cannot_honour(
    receiver: tuple[int, list[dict[str, Any]]], length: str
) -> None:
    port, got = receiver
    answer = _post(port, f"Content-Length: {length}\r\n", wait_s=3.0)
    assert answer.startswith(b"HTTP/1.0 400"), answer
    assert got == []


def test_the_example_receiver_hangs_up_on_a_body_that_never_comes(receiver: tuple[int, list[dict[str, Any]]]) -> None:
    port, _ = receiver
    started = time.monotonic()
    assert _post(port, "Content-Length: 100\r\n", b"{", wait_s=5.0) == b""  # closed, not held for ever
    assert time.monotonic() - started < 4.0


def test_the_example_receiver_takes_a_signed_delivery(receiver: tuple[int, list[dict[str, Any]]]) -> None:
    from datetime import UTC, datetime

    from standardwebhooks import Webhook

    port, got = receiver
    body = json.dumps({"id": "m-1", "type": "execution.completed"})
    now = datetime.now(UTC)
    signature = Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").sign("m-1", now, body)
    head = f"webhook-id: m-1\r\nwebhook-timestamp: {int(now.timestamp())}\r\nwebhook-signature: {signature}\r\n"
    answer = _post(port, f"{head}Content-Length: {len(body)}\r\n", body.encode())
    assert answer.startswith(b"HTTP/1.0 204") and got == [{"id": "m-1", "type": "execution.completed"}]


def test_the_example_receiver_reads_its_secret_from_the_environment_and_refuses_a_placeholder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples.webhooks import receiver

    monkeypatch.setenv("QP_WEBHOOK_SECRET", "whsec_...")  # the docs' placeholder, pasted as is
    with pytest.raises(SystemExit) as ended:
        receiver.main(["--port", "0"])
    assert ended.value.code == 2 and "QP_WEBHOOK_SECRET" in capsys.readouterr().err
