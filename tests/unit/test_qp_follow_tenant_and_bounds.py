# intent_ref: platform.gateway
"""The client and `qp` as a busy tenant meets them: `run --follow` reads the execution at most once a second (once, at
the end, off a terminal), a compensation burst and an event beyond a step's move included, once for all the events
queued (64 at most, their thread stopped with the view), and once more when the events pause; a stream or
a listing keeps the tenant it began with through `set_tenant`; a stream cut again and again after it lasted keeps its
reconnects, one answered and dropped at once spends them, backing off, and never waits less than the server's
`retry:`; an unexpected exception exits 70 (an OSError, RuntimeError or ValueError of qp's own too) and a reader that
goes away exits 141, or the followed run's outcome; the SDK's error text is inert and `qp` prints a bounded part of a
huge one; a long poll's `wait` (in its parameters or its path) lasts past the client's timeout; an answer nested too
deeply is one error line and exit 3."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import quantum_platform.client as client_module
from quantum_platform import AsyncClient, Client, CredentialError, RetryWait, StaticToken, UnexpectedAnswer, cli
from quantum_platform.errors import problem_from
from rich.console import Console

from tests.unit.test_cli import ENTRA, INTENT_ID, Platform, home, platform, qp  # noqa: F401  # fixtures
from tests.unit.test_client_package import pauses  # noqa: F401  # the fixture

ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}
EVENTS = "/api/v1/executions/e/events"
SSE = {"content-type": "text/event-stream", "X-Keep-Alive-Interval": "15"}
Handler = Callable[[httpx.Request], httpx.Response]


# ------------------------------------------------------------------------------------------ run --follow's reads
STEPS = 120


def _busy_run(platform: Platform, reads: list[httpx.Request]) -> None:
    """An execution of STEPS steps whose 2 * STEPS + 1 events come in one page; its reads counted in `reads`."""
    steps = [{"step_id": f"s{i}", "action": "noop", "state": "succeeded"} for i in range(STEPS)]
    events = [
        {"seq": 2 * i + n + 1, "type": kind, "step": f"s{i}", "step_id": f"s{i}"}
        for i in range(STEPS)
        for n, kind in enumerate(("step_started", "step_completed"))
    ]
    events.append({"seq": 2 * STEPS + 1, "type": "execution_completed"})
    page = {"items": events, "next_after": 2 * STEPS + 1, "status": "succeeded"}

    def handler(request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {request.url.path}"
        if route == f"POST /api/v1/intents/{INTENT_ID}/execute":
            return httpx.Response(202, json={"execution_id": "e-1", "status": "pending"})
        if route == "GET /api/v1/executions/e-1/events":
            return httpx.Response(200, json=page)
        assert route == "GET /api/v1/executions/e-1", route
        reads.append(request)
        return httpx.Response(200, json={"id": "e-1", "status": "succeeded", "steps": steps})

    platform.handler = handler


def test_run_follow_off_a_terminal_reads_the_execution_once_at_its_end(platform: Platform) -> None:
    reads: list[httpx.Request] = []
    _busy_run(platform, reads)
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(reads) == 1  # not one per event: 2 * STEPS + 2 before
    assert "execution e-1 succeeded" in result.stdout
    assert len(result.stderr.splitlines()) == 1 + 2 * STEPS + 1  # its id, then each event as it came


def test_run_follow_on_a_terminal_reads_the_execution_at_most_once_a_second(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each look at the clock moves it on 50 ms: the events of a busy run come ~20 a second, and the view reads the
    execution at the first, then about once a second, then once at the end."""
    monkeypatch.setattr(cli, "out", Console(file=io.StringIO(), force_terminal=True, width=200))
    now = [0.0]

    def clock() -> float:
        now[0] += 0.05
        return now[0]

    monkeypatch.setattr(cli, "_clock", clock, raising=False)
    reads: list[httpx.Request] = []
    _busy_run(platform, reads)
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    # 2 * STEPS events and at most two looks at the clock each: at most 24 s of that clock, so at most 26 reads.
    assert 2 <= len(reads) <= 2 + 4 * STEPS * 0.05 / cli._REDRAW_S, len(reads)


def test_between_two_reads_the_view_moves_a_step_as_its_events_say() -> None:
    execution = {
        "id": "e-1",
        "status": "running",
        "steps": [{"step_id": "a", "state": "pending"}, {"step_id": "b", "state": "pending"}],
    }
    started = cli._moved(execution, {"seq": 2, "type": "step_started", "step": "a", "step_id": "a"})
    assert [s["state"] for s in started["steps"]] == ["running", "pending"]
    done = cli._moved(started, {"seq": 3, "type": "step_completed", "step_id": "a"})
    failed = cli._moved(done, {"seq": 4, "type": "step_failed", "step": "b"})
    assert [s["state"] for s in failed["steps"]] == ["succeeded", "failed"]
    assert cli._moved(failed, {"seq": 5, "type": "execution_waiting"}) is failed
    assert [s["state"] for s in execution["steps"]] == ["pending", "pending"]  # the read itself is left as it was


# ------------------------------------------------------------------------------------------ a stream keeps its tenant
class PerTenant:
    """A credential minting `token-<tenant>`, recording the tenants whose token a 401 renewed."""

    def __init__(self) -> None:
        self.refreshed: list[str | None] = []

    def token(self, tenant: str | None) -> str:
        return f"token-{tenant}"

    def refresh(self, tenant: str | None) -> None:
        self.refreshed.append(tenant)


class Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A stream's body: `sent`, then the connection lost."""

    def __init__(self, sent: bytes) -> None:
        self._sent = sent

    def __iter__(self) -> Iterator[bytes]:
        yield self._sent
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    async def __aiter__(self) -> Any:
        yield self._sent
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def _event(seq: int, kind: str) -> bytes:
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps({'seq': seq, 'type': kind})}\n\n".encode()


def _switching_stream(seen: list[tuple[str, str]]) -> Handler:
    """An event, then the connection lost; the reconnect is refused 401 once, then the stream ends the execution."""
    answers = [
        httpx.Response(200, headers=SSE, stream=Broken(b"retry: 1000\n\n" + _event(1, "step_started"))),
        httpx.Response(401, json={"title": "Unauthorized", "status": 401}),
        httpx.Response(200, headers=SSE, content=_event(2, "execution_completed")),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["Authorization"], request.url.params["after"]))
        return answers.pop(0)

    return handler


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_a_stream_reconnects_with_its_own_tenants_token_after_set_tenant(
    follow: str,
    pauses: list[float],  # noqa: F811
) -> None:
    seen: list[tuple[str, str]] = []
    credential = PerTenant()
    transport = _switching_stream(seen)
    events: list[str] = []
    if follow == "sync":
        with Client(
            "http://p", credential=credential, tenant="contoso", transport=httpx.MockTransport(transport)
        ) as api:
            for event in api.stream(EVENTS):
                events.append(event["type"])
                api.set_tenant("fabrikam")
    else:

        async def run() -> None:
            async with AsyncClient(
                "http://p", credential=credential, tenant="contoso", transport=httpx.MockTransport(transport)
            ) as api:
                async for event in api.stream(EVENTS):
                    events.append(event["type"])
                    api.set_tenant("fabrikam")

        asyncio.run(run())
    assert events == ["step_started", "execution_completed"]
    assert seen == [("Bearer token-contoso", "0"), ("Bearer token-contoso", "1"), ("Bearer token-contoso", "1")]
    assert credential.refreshed == ["contoso"]  # the stream's tenant's token was renewed, not the client's new one


def _pages_by_tenant(seen: list[str]) -> Handler:
    """Two pages of each tenant's executions (cursor `2`), the second refused 401 once; `seen` gets each token."""
    refused = [httpx.Response(401, json={"title": "Unauthorized", "status": 401})]

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Bearer token-")
        seen.append(token)
        if request.url.params.get("cursor") == "2":
            if refused:
                return refused.pop()
            return httpx.Response(200, json={"items": [{"id": f"{token}-3"}], "next_cursor": None})
        return httpx.Response(200, json={"items": [{"id": f"{token}-1"}, {"id": f"{token}-2"}], "next_cursor": "2"})

    return handler


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_a_listing_walked_across_set_tenant_is_one_tenants(follow: str) -> None:
    seen: list[str] = []
    credential = PerTenant()
    transport = httpx.MockTransport(_pages_by_tenant(seen))
    ids: list[str] = []
    if follow == "sync":
        with Client("http://p", credential=credential, tenant="contoso", transport=transport) as api:
            for item in api.executions.iterate():
                ids.append(item["id"])
                api.set_tenant("fabrikam")
    else:

        async def run() -> None:
            async with AsyncClient("http://p", credential=credential, tenant="contoso", transport=transport) as api:
                async for item in api.executions.iterate():
                    ids.append(item["id"])
                    api.set_tenant("fabrikam")

        asyncio.run(run())
    assert ids == ["contoso-1", "contoso-2", "contoso-3"]
    assert seen == ["contoso", "contoso", "contoso"]
    assert credential.refreshed == ["contoso"]


def test_a_listing_is_the_tenants_it_was_asked_of_and_set_tenant_applies_to_the_next_one() -> None:
    seen: list[str] = []
    with Client(
        "http://p", credential=PerTenant(), tenant="contoso", transport=httpx.MockTransport(_pages_by_tenant(seen))
    ) as api:
        pages = api.iterate("/api/v1/executions")
        api.set_tenant("fabrikam")
        assert [item["id"] for item in pages] == ["contoso-1", "contoso-2", "contoso-3"]
        assert [item["id"] for item in api.executions.iterate()] == ["fabrikam-1", "fabrikam-2", "fabrikam-3"]
        assert api.get("/api/v1/executions").json()["items"][0]["id"] == "fabrikam-1"


# ------------------------------------------------------------------------------------------ a stream cut repeatedly
OPENING = b"retry: 1000\n\n"
"""What the server writes first on every stream it opens (shared/api/event_stream.py): its reconnection time, 1 s."""
GIVE_UP = [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0]
"""The waits of 12 failed reconnects in a row: the back-off doubling from 0.5 s to 30 s, never under the `retry:`."""


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's monotonic clock, moved on only by a test's streams (`Lasting`)."""
    now = [0.0]
    monkeypatch.setattr(client_module, "_monotonic", lambda: now[0])
    return now


class Lasting(Broken):
    """A stream's body: `sent`, then `seconds` pass on `clock`, then the connection lost."""

    def __init__(self, sent: bytes, clock: list[float], seconds: float) -> None:
        super().__init__(sent)
        self._clock, self._seconds = clock, seconds

    def __iter__(self) -> Iterator[bytes]:
        yield self._sent
        self._clock[0] += self._seconds
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    async def __aiter__(self) -> Any:
        yield self._sent
        self._clock[0] += self._seconds
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def _followed(follow: str, handler: Handler) -> list[dict[str, Any]]:
    """The events `stream` yields to the sync or the async client."""
    transport = httpx.MockTransport(handler)
    if follow == "sync":
        with Client("http://p", credential=StaticToken("t"), transport=transport) as api:
            return list(api.stream(EVENTS))

    async def run() -> list[dict[str, Any]]:
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=transport) as api:
            return [event async for event in api.stream(EVENTS)]

    return asyncio.run(run())


CUTS = 6
"""Streams cut at once after their `retry:` and a keep-alive, fewer than the reconnects a follow may spend."""


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_a_stream_cut_at_once_after_its_retry_line_backs_off_and_waits_the_servers_retry(
    follow: str,
    pauses: list[float],  # noqa: F811
) -> None:
    opened: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        opened.append(1)
        if len(opened) <= CUTS:
            return httpx.Response(200, headers=SSE, stream=Broken(OPENING + b": keep-alive\n\n"))
        return httpx.Response(200, headers=SSE, content=_event(1, "execution_completed"))

    assert [event["type"] for event in _followed(follow, handler)] == ["execution_completed"]
    assert len(opened) == CUTS + 1
    # The opening `retry:` and a keep-alive prove nothing: each cut is one more failure in a row, and the back-off
    # grows (0.5 s, 1 s, 2 s, ...), never under the server's 1 s.
    assert pauses == GIVE_UP[:CUTS] == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0]


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_a_server_answering_200_then_dropping_at_once_is_given_up_after_the_reconnects(
    follow: str,
    pauses: list[float],  # noqa: F811
) -> None:
    opened: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        opened.append(1)
        assert len(opened) <= 60, "reconnecting for ever"
        return httpx.Response(200, headers=SSE, stream=Broken(OPENING))

    with pytest.raises(httpx.RemoteProtocolError):
        _followed(follow, handler)
    assert len(opened) == 13
    assert pauses == GIVE_UP


@pytest.mark.parametrize("follow", ["sync", "async"])
def test_a_quiet_stream_cut_again_and_again_after_it_lasted_is_followed_to_its_end(
    follow: str,
    pauses: list[float],  # noqa: F811
    clock: list[float],
) -> None:
    """A proxy cutting every quiet stream once it has lasted a while (6 s here): more than twice the reconnects a
    follow may spend in a row, each starting the back-off again, each waiting the server's `retry:`."""
    opened: list[int] = []
    cuts = 30

    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        opened.append(1)
        if len(opened) <= cuts:
            return httpx.Response(200, headers=SSE, stream=Lasting(OPENING, clock, 6.0))
        return httpx.Response(200, headers=SSE, content=_event(1, "execution_completed"))

    assert [event["type"] for event in _followed(follow, handler)] == ["execution_completed"]
    assert len(opened) == cuts + 1
    assert pauses == [1.0] * cuts


def test_a_stream_is_timed_from_its_answer_not_from_connecting(
    pauses: list[float],  # noqa: F811
    clock: list[float],
) -> None:
    """Connecting took 10 s, then the stream answered and dropped at once: it did not last, and spends a reconnect."""
    opened: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        opened.append(1)
        assert len(opened) <= 60, "reconnecting for ever"
        clock[0] += 10.0
        return httpx.Response(200, headers=SSE, stream=Broken(OPENING))

    with pytest.raises(httpx.RemoteProtocolError):
        _followed("sync", handler)
    assert len(opened) == 13 and pauses == GIVE_UP


def test_a_servers_retry_is_waited_and_bounded(pauses: list[float]) -> None:  # noqa: F811
    answers = [
        httpx.Response(200, headers=SSE, stream=Broken(b"retry: 20000\n\n")),
        httpx.Response(200, headers=SSE, stream=Broken(b"retry: 999999999\n\n")),
        httpx.Response(200, headers=SSE, content=_event(1, "execution_completed")),
    ]
    assert [event["type"] for event in _followed("sync", lambda request: answers.pop(0))] == ["execution_completed"]
    assert pauses == [20.0, 60.0]  # at least the server's 20 s; a server's hour held to 60 s


def test_qp_run_follow_against_a_server_answering_then_dropping_exits_3(
    platform: Platform,
    pauses: list[float],  # noqa: F811
) -> None:
    """`qp run --follow` in CI against a stream that opens and drops at once: it gives up and exits 3, not hangs."""
    streams: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {request.url.path}"
        if route == f"POST /api/v1/intents/{INTENT_ID}/execute":
            return httpx.Response(202, json={"execution_id": "e-1", "status": "pending"})
        assert route == "GET /api/v1/executions/e-1/events", route
        streams.append(1)
        assert len(streams) <= 60, "reconnecting for ever"
        return httpx.Response(200, headers=SSE, stream=Broken(OPENING))

    platform.handler = handler
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM, (result.output, result.exception)
    assert len(streams) == 13 and pauses == GIVE_UP
    assert "RemoteProtocolError" in result.stderr.splitlines()[-1]


def test_a_stream_cut_before_it_brought_anything_still_spends_the_reconnects(pauses: list[float]) -> None:  # noqa: F811
    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, headers=SSE, stream=Broken(b"retry: 30"))  # not even a whole line

    heard: list[RetryWait] = []
    with (
        Client(
            "http://p", credential=StaticToken("t"), transport=httpx.MockTransport(handler), on_retry=heard.append
        ) as api,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        list(api.stream(EVENTS))
    assert [wait.attempt for wait in heard] == list(range(1, 13))


# ------------------------------------------------------------------------------------------ exit codes
def test_an_exception_qp_does_not_expect_prints_its_traceback_and_exits_70(
    home: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken_client() -> Any:
        raise KeyError("a bug in qp")

    monkeypatch.setattr(cli, "_client", broken_client)
    monkeypatch.setenv("QP_TOKEN", "t")
    with pytest.raises(SystemExit) as exited:
        cli.main(["executions", "get", "e-1"])
    assert exited.value.code == cli.EXIT_SOFTWARE
    said = capsys.readouterr().err
    assert said.startswith("Traceback (most recent call last):") and "KeyError: 'a bug in qp'" in said


class _Events(BaseHTTPRequestHandler):
    """Pages of 100 events each, 5,000 in all: far more than a pipe holds."""

    def do_GET(self) -> None:
        after = int(httpx.URL(self.path).params.get("after") or 0)
        numbers = range(after + 1, min(after + 100, 5000) + 1)
        items = [{"seq": n, "type": "step_completed", "step": "s", "result": {"text": "x" * 80}} for n in numbers]
        body = json.dumps({"items": items, "next_after": items[-1]["seq"] if items else after}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        return None


@pytest.fixture
def events_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Events)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_qp_whose_reader_goes_away_ends_quietly_with_exit_141(events_server: str, tmp_path: Path) -> None:
    """`qp events e -o json | head -1`: the first line read, the pipe closed; qp says nothing and exits 141 (128 +
    SIGPIPE), never 0: a pipeline's status must not say a command did all it was asked when its output was cut."""
    env = {"QP_URL": events_server, "QP_TOKEN": "t", "QP_PROFILE": str(tmp_path / "p.json"), "HOME": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "quantum_platform.cli", "events", "e", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**env, "PATH": "/usr/bin:/bin"},
    )
    assert process.stdout is not None and process.stderr is not None
    first = json.loads(process.stdout.readline())
    process.stdout.close()
    said = process.stderr.read()
    assert process.wait(60) == 141, said
    assert first["seq"] == 1 and said == b""


class _FailedRun(BaseHTTPRequestHandler):
    """An execution started and at once failed: its events end in `execution_failed`, its read says failed."""

    def _answer(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self._answer(202, {"execution_id": "e-1", "status": "pending"})

    def do_GET(self) -> None:
        if httpx.URL(self.path).path.endswith("/events"):
            items = [{"seq": 1, "type": "execution_started"}, {"seq": 2, "type": "execution_failed", "error": "x"}]
            self._answer(200, {"items": items, "next_after": 2, "status": "failed"})
        else:
            self._answer(200, {"id": "e-1", "status": "failed", "steps": [], "error": "x"})

    def log_message(self, *_: Any) -> None:
        return None


@pytest.mark.parametrize(("output", "code"), [("table", cli.EXIT_FAILED), ("json", 141)])
def test_qp_run_follow_whose_reader_goes_away_exits_with_the_runs_outcome_or_141(
    output: str, code: int, tmp_path: Path
) -> None:
    """`qp run ID --follow | true` of a run that failed: its view (drawn at its end, off a terminal) is not shown, and
    qp exits 1, as the failed run; with `-o json` the reader is gone at the first event, before the end is read: 141.
    Never 0, which a pipeline's script reads as a run that succeeded."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailedRun)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"QP_URL": url, "QP_TOKEN": "t", "QP_PROFILE": str(tmp_path / "p.json"), "HOME": str(tmp_path)}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "quantum_platform.cli", "run", INTENT_ID, "--follow", "-o", output],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, "PATH": "/usr/bin:/bin"},
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # `| true`: nothing of it is read
        said = process.stderr.read()
        assert process.wait(60) == code, said
        assert b"Traceback" not in said and b"error" not in said
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------ inert error text
HOSTILE_TITLE = "Bad\x1b]0;pwned\x07"


def test_the_sdks_error_text_shows_a_servers_controls_as_escapes_and_keeps_its_document() -> None:
    document = {
        "title": HOSTILE_TITLE,
        "status": 400,
        "detail": "see\x1b[2J\u202eit",
        "errors": [{"pointer": "/name", "detail": "x\x9b31m"}, {"pointer": "/a\u2066", "detail": "y"}],
    }
    problem = problem_from(httpx.Response(400, json=document))
    assert str(problem) == problem.summary == "400 Bad\\x1b]0;pwned\\x07: see\\x1b[2J\\u202eit (/name: x\\x9b31m)"
    assert problem.headline == "400 Bad\\x1b]0;pwned\\x07: see\\x1b[2J\\u202eit"
    assert problem.problems == ["/name: x\\x9b31m", "/a\\u2066: y"]
    assert problem.document == document and problem.title == HOSTILE_TITLE  # the answer itself as it came


def test_a_retrys_reason_shows_the_answers_controls_as_escapes(pauses: list[float]) -> None:  # noqa: F811
    busy = {"title": "Too\x1b[2J many\u2028requests", "status": 429}
    answers = [httpx.Response(429, json=busy, headers={"Retry-After": "1"}), httpx.Response(200, json={})]
    heard: list[RetryWait] = []
    with Client(
        "http://p",
        credential=StaticToken("t"),
        transport=httpx.MockTransport(lambda request: answers.pop(0)),
        on_retry=heard.append,
    ) as api:
        api.get("/api/v1/intents")
    assert [wait.reason for wait in heard] == ["429 Too\\x1b[2J many requests"]


def test_a_reconnects_reason_shows_the_answers_controls_as_escapes(pauses: list[float]) -> None:  # noqa: F811
    busy = {"title": "Bad\x1b]0;gateway\x07", "status": 502}
    answers = [
        httpx.Response(502, json=busy, headers={"Retry-After": "0"}),
        httpx.Response(200, headers=SSE, content=_event(1, "execution_completed")),
    ]
    heard: list[RetryWait] = []
    with Client(
        "http://p",
        credential=StaticToken("t"),
        transport=httpx.MockTransport(lambda request: answers.pop(0)),
        on_retry=heard.append,
    ) as api:
        assert [event["type"] for event in api.stream(EVENTS)] == ["execution_completed"]
    assert [wait.reason for wait in heard] == ["502 Bad\\x1b]0;gateway\\x07"]


# ------------------------------------------------------------------------------------------ a huge refusal
def test_a_huge_refusal_prints_the_start_of_its_detail_and_the_first_50_problems(
    platform: Platform, tmp_path: Path
) -> None:
    definition = tmp_path / "intent.json"
    definition.write_text("{}")
    errors = [{"pointer": f"/steps/{n}", "detail": "needs an action"} for n in range(50_000)]
    problem = {"title": "Unprocessable content", "status": 422, "detail": "d" * 2_000_000, "errors": errors}
    platform.answer({"POST /api/v1/intents/validate": httpx.Response(422, json=problem)})
    result = qp("intents", "validate", str(definition), env=ENV)
    assert result.exit_code == cli.EXIT_PROBLEM, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 + 50 + 1, len(lines)
    assert lines[0].startswith("error: 422 Unprocessable content: ddd")
    assert lines[0].endswith(f"… ({len('422 Unprocessable content: ') + 2_000_000 - 2000} more characters)")
    assert len(lines[0]) < 2100
    assert lines[1:51] == [f"  /steps/{n}: needs an action" for n in range(50)]
    assert lines[51] == "  …and 49950 more"


# ------------------------------------------------------------------------------------------ the long poll's wait
def test_a_long_poll_waits_past_the_clients_timeout_for_its_wait() -> None:
    timeouts: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(200, json={"items": [], "next_after": 0})

    with Client("http://p", credential=StaticToken("t"), timeout=2, transport=httpx.MockTransport(handler)) as api:
        api.executions.events("e", wait=5)
        api.executions.events("e")
        api.get("/api/v1/intents")
    assert [t["read"] for t in timeouts] == [10.0, 2.0, 2.0]
    assert all(t["connect"] == t["write"] == t["pool"] == 2.0 for t in timeouts)


class _Held(BaseHTTPRequestHandler):
    """A long poll held as its `wait` asks before its answer."""

    def do_GET(self) -> None:
        threading.Event().wait(float(httpx.URL(self.path).params.get("wait") or 0))
        body = b'{"items": [], "next_after": 0}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        return None


def test_a_long_poll_held_longer_than_the_clients_timeout_is_answered() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Held)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with Client(url, credential=StaticToken("t"), timeout=0.5, max_retries=0) as api:
            assert api.executions.events("e", wait=1.5).json() == {"items": [], "next_after": 0}
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------ a live view that waits
WAIT_REASON = "step b waits for the approval of an Intent.Approver"


class _Waiting(httpx.SyncByteStream):
    """A run's stream up to its approval: the execution started, step a ran, step b started and asks for an approval,
    the execution waits; then nothing until `shown` says the view shows why it waits (10 s at most), then its end."""

    def __init__(self, shown: Callable[[], bool], ending: threading.Event) -> None:
        self._shown, self._ending = shown, ending

    def __iter__(self) -> Iterator[bytes]:
        yield OPENING
        for seq, kind, step in [
            (1, "execution_started", None),
            (2, "step_started", "a"),
            (3, "step_completed", "a"),
            (4, "step_started", "b"),
            (5, "approval_requested", "b"),
            (6, "execution_waiting", None),
        ]:
            data = {"seq": seq, "type": kind, "step": step, "step_id": step}
            yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()
        waited = threading.Event()
        for _ in range(100):
            if self._shown():
                break
            waited.wait(0.1)
        self._ending.set()
        yield _event(7, "execution_completed")


def test_the_live_view_of_a_run_that_waits_for_an_approval_shows_that_it_waits_and_why(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The execution's first read (at its first events) still says running, as a read racing the events may; the read
    once the events paused (owed to the approval's events, or the catch-up) says waiting, and why. Without that read,
    and with the approval's events moving nothing, the view sat on `running` until the run's end."""
    screen = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=screen, force_terminal=True, width=200))
    reads: list[int] = []
    ended = threading.Event()

    def execution() -> dict[str, Any]:
        steps = [
            {"step_id": "a", "action": "noop", "state": "succeeded"},
            {"step_id": "b", "action": "approval", "state": "waiting"},
        ]
        if ended.is_set():
            return {"id": "e-1", "status": "succeeded", "steps": steps}
        if len(reads) <= 1:
            return {"id": "e-1", "status": "running", "steps": steps}
        return {"id": "e-1", "status": "waiting", "wait_reason": WAIT_REASON, "steps": steps}

    def handler(request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {request.url.path}"
        if route == f"POST /api/v1/intents/{INTENT_ID}/execute":
            return httpx.Response(202, json={"execution_id": "e-1", "status": "pending"})
        if route == "GET /api/v1/executions/e-1/events":
            return httpx.Response(200, headers=SSE, stream=_Waiting(lambda: WAIT_REASON in screen.getvalue(), ended))
        assert route == "GET /api/v1/executions/e-1", route
        reads.append(1)
        return httpx.Response(200, json=execution())

    platform.handler = handler
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert WAIT_REASON in screen.getvalue()
    assert "execution e-1 waiting" in screen.getvalue()


# ------------------------------------------------------------------------------------------ qp's own faults
@pytest.mark.parametrize("fault", [OSError("a bug"), RuntimeError("a bug"), ValueError("a bug")])
def test_an_oserror_runtimeerror_or_valueerror_of_qps_own_exits_70_with_its_traceback(
    fault: Exception,
    home: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken_client() -> Any:
        raise fault

    monkeypatch.setattr(cli, "_client", broken_client)
    monkeypatch.setenv("QP_TOKEN", "t")
    with pytest.raises(SystemExit) as exited:
        cli.main(["executions", "get", "e-1"])
    assert exited.value.code == cli.EXIT_SOFTWARE
    said = capsys.readouterr().err
    assert said.startswith("Traceback (most recent call last):") and f"{type(fault).__name__}: a bug" in said


def test_a_token_the_devhost_cannot_mint_is_a_refusal_exit_3(
    home: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    credential = cli.DevhostCredential(project_dir=home / "no-checkout")
    monkeypatch.setattr(cli, "_credential", lambda *_, **__: credential)
    with pytest.raises(SystemExit) as exited:
        cli.main(["executions", "get", "e-1"])
    assert exited.value.code == cli.EXIT_PROBLEM
    said = capsys.readouterr().err
    assert said.startswith("error: minting a dev token for contoso failed") and "Traceback" not in said
    with pytest.raises(RuntimeError):  # a RuntimeError still, as it was raised before
        credential.token(None)
    assert issubclass(CredentialError, RuntimeError)


def test_a_repeated_cursor_is_said_with_its_controls_escaped() -> None:
    hostile = "A\x1b]0;pwned\x07\u202e"
    answer = {"items": [], "next_cursor": hostile}
    with (
        Client(
            "http://p",
            credential=StaticToken("t"),
            transport=httpx.MockTransport(lambda r: httpx.Response(200, json=answer)),
        ) as api,
        pytest.raises(UnexpectedAnswer) as raised,
    ):
        list(api.iterate("/api/v1/intents"))
    said = str(raised.value)
    assert "(A\\x1b]0;pwned\\x07\\u202e)" in said
    assert "\x1b" not in said and "\x07" not in said and "\u202e" not in said


def test_a_long_poll_whose_wait_is_in_its_path_waits_past_the_clients_timeout() -> None:
    timeouts: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(200, json={"items": [], "next_after": 0})

    with Client("http://p", credential=StaticToken("t"), timeout=2, transport=httpx.MockTransport(handler)) as api:
        api.get("/api/v1/executions/e/events?wait=5")
        api.get("/api/v1/executions/e/events?wait=5", params={"wait": 1})  # the parameter wins, as it is sent
        api.get("/api/v1/executions/e/events?after=3")
    assert [t["read"] for t in timeouts] == [10.0, 6.0, 2.0]


# ------------------------------------------------------------------------------------------ the live view's bounds
def _looking_clock(monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    """The view on a terminal, and a clock that moves on `step` seconds at each look."""
    monkeypatch.setattr(cli, "out", Console(file=io.StringIO(), force_terminal=True, width=200))
    now = [0.0]

    def clock() -> float:
        now[0] += step
        return now[0]

    monkeypatch.setattr(cli, "_clock", clock, raising=False)


def test_a_compensation_burst_reads_the_execution_at_most_once_a_second(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run failing at its 100th step sends a step's failure, then two compensation events for each step before it:
    each clock look moves 50 ms, so the 202 events take at most ~20 s of it, and the view reads at most once a second
    (the step's failure, beyond a step's move, is read `_REDRAW_S` after the last read, not at once)."""
    _looking_clock(monkeypatch, 0.05)
    steps = [{"step_id": f"s{i}", "action": "noop", "state": "compensated"} for i in range(100)]
    events: list[dict[str, Any]] = [{"seq": 1, "type": "step_failed", "step": "s100", "step_id": "s100"}]
    for i in reversed(range(100)):
        for kind in ("compensation_started", "compensation_completed"):
            events.append({"seq": len(events) + 1, "type": kind, "step": f"s{i}", "step_id": f"s{i}"})
    events.append({"seq": len(events) + 1, "type": "execution_failed"})
    page = {"items": events, "next_after": len(events), "status": "failed"}
    reads: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {request.url.path}"
        if route == f"POST /api/v1/intents/{INTENT_ID}/execute":
            return httpx.Response(202, json={"execution_id": "e-1", "status": "pending"})
        if route == "GET /api/v1/executions/e-1/events":
            return httpx.Response(200, json=page)
        assert route == "GET /api/v1/executions/e-1", route
        reads.append(1)
        return httpx.Response(200, json={"id": "e-1", "status": "failed", "steps": steps})

    platform.handler = handler
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == cli.EXIT_FAILED, (result.output, result.exception)
    # 202 events, at most two looks at the clock each: at most ~20 s of it, so at most ~20 reads, and the first and
    # the final one (one read per compensation event before: 202).
    assert 2 <= len(reads) <= 3 + 2 * len(events) * 0.05 / cli._REDRAW_S, len(reads)


def _until(condition: Callable[[], bool]) -> None:
    """Wait, 10 s at most, for `condition`."""
    waited = threading.Event()
    for _ in range(1000):
        if condition():
            return
        waited.wait(0.01)


def test_the_events_waiting_for_the_view_are_bounded() -> None:
    """A stream read faster than the view takes its events stops being read once 64 wait: 2,000 events of 100 KB
    held 233 MB before."""
    produced = [0]

    def events() -> Iterator[dict[str, Any]]:
        for seq in range(1, 1001):
            produced[0] = seq
            yield {"seq": seq, "type": "step_started", "step_id": "s"}

    feed = cli._Feed(events())
    _until(lambda: feed._queue.full() or produced[0] == 1000)
    try:
        assert produced[0] <= 64 + 1, produced[0]  # 64 queued, one held by the thread
    finally:
        feed.close()


def test_the_view_reads_once_for_all_the_events_queued(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read of the execution waits until the events waiting for the view are at their bound, and each clock look
    moves 2 s, so every batch is read: one read for each 64 events queued, not one per event (200 before)."""
    _looking_clock(monkeypatch, 2.0)
    feeds: list[Any] = []

    class Recorded(cli._Feed):
        def __init__(self, events: Iterator[dict[str, Any]]) -> None:
            feeds.append(self)
            super().__init__(events)

    monkeypatch.setattr(cli, "_Feed", Recorded)
    produced = [0]

    class Many(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield OPENING
            for seq in range(1, 201):
                produced[0] = seq
                yield _event(seq, "step_started")
            produced[0] = 201
            yield _event(201, "execution_completed")

    reads: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {request.url.path}"
        if route == f"POST /api/v1/intents/{INTENT_ID}/execute":
            return httpx.Response(202, json={"execution_id": "e-1", "status": "pending"})
        if route == "GET /api/v1/executions/e-1/events":
            return httpx.Response(200, headers=SSE, stream=Many())
        assert route == "GET /api/v1/executions/e-1", route
        reads.append(1)
        _until(lambda: produced[0] == 201 or (bool(feeds) and feeds[0]._queue.full()))
        return httpx.Response(200, json={"id": "e-1", "status": "succeeded", "steps": []})

    platform.handler = handler
    result = qp("run", INTENT_ID, "--follow", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(reads) <= 10, len(reads)  # the first, one per 64 events (4), a catch-up or two, the final one


class _Endless(httpx.SyncByteStream):
    """A run's stream that goes on sending step events until `over` is set (the test's end)."""

    def __init__(self, over: threading.Event) -> None:
        self._over = over

    def __iter__(self) -> Iterator[bytes]:
        yield OPENING
        seq = 0
        while not self._over.wait(0.01):
            seq += 1
            yield _event(seq, "step_started")


def test_the_events_thread_ends_when_the_view_stops_on_an_error(platform: Platform) -> None:
    """The execution's read answers 404 while its events go on: `qp` exits 3, and the thread reading the events stops
    at its next one (it read on, in the process, until the stream's end)."""
    over = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {request.url.path}"
        if route == f"POST /api/v1/intents/{INTENT_ID}/execute":
            return httpx.Response(202, json={"execution_id": "e-1", "status": "pending"})
        if route == "GET /api/v1/executions/e-1/events":
            return httpx.Response(200, headers=SSE, stream=_Endless(over))
        assert route == "GET /api/v1/executions/e-1", route
        return httpx.Response(404, json={"title": "Not Found", "status": 404})

    platform.handler = handler
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cli, "out", Console(file=io.StringIO(), force_terminal=True, width=200))
            result = qp("run", INTENT_ID, "--follow", env=ENV)
        assert result.exit_code == cli.EXIT_PROBLEM, (result.output, result.exception)
        readers = [thread for thread in threading.enumerate() if thread.name == "qp-follow-events"]
        assert readers
        for thread in readers:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in readers)
    finally:
        over.set()


# ------------------------------------------------------------------------------------------ a deeply nested answer
DEEP = b"[" * 100000 + b"]" * 100000


@pytest.mark.parametrize("status", [200, 400])
def test_an_answer_nested_too_deeply_is_one_error_and_exit_3(
    status: int,
    platform: Platform,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`[[[...]]]` 100,000 deep (an execution's read answered, or its refusal) is an unexpected answer or a refusal
    said in one error, exit 3: the parser's RecursionError (a RuntimeError) exited 70 with a traceback."""
    platform.handler = lambda request: httpx.Response(
        status, content=DEEP, headers={"content-type": "application/json"}
    )
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        cli.main(["executions", "get", "e-1"])
    assert exited.value.code == cli.EXIT_PROBLEM
    said = capsys.readouterr().err
    assert said.startswith("error: ") and said.count("error: ") == 1 and "Traceback" not in said, said[:2000]
    assert problem_from(httpx.Response(400, content=DEEP)).document["detail"] == DEEP[:500].decode()
