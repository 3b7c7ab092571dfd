# intent_ref: platform.execution
"""An execution's events as server-sent events through the devhost: streamed as recorded, resumable, kept alive,
ended after the terminal event, and a crowd of open streams holds no connection each."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devhost.child import PROJECT_ROOT, DevhostProcess, free_port
from tests.e2e.test_executions_e2e import APPROVER, Platform, start_platform_host

pytestmark = pytest.mark.e2e

KEEPALIVE_S = 0.3
SSE = {"Accept": "text/event-stream"}
READER = ["Intent.Reader"]
AUTHOR = ["Intent.Author", "Intent.Executor", "Intent.Reader"]


@dataclass
class Stream:
    """What one SSE response carried: its messages (id, event, data) and its comment lines, in order."""

    status: int
    content_type: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: bool = False


def read_stream(lines: Iterator[str], into: Stream, *, stop_after: int | None = None) -> Stream:
    """Parse the SSE body line by line (comments included, which SSE clients hide) until it ends, or until it has
    carried `stop_after` messages in all (the same `lines` go on from there)."""
    message: dict[str, Any] = {}
    for line in lines:
        if line.startswith(":"):
            into.comments.append(line[1:].strip())
        elif line == "":
            if "data" in message:
                into.messages.append({**message, "data": json.loads(message["data"])})
                if stop_after is not None and len(into.messages) >= stop_after:
                    return into
            message = {}
        else:
            name, _, value = line.partition(":")
            message[name] = value.removeprefix(" ")
    into.ended = True
    return into


@pytest.fixture(scope="module")
def platform(pg: Any, azurite: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    env = {"QP_TASK_HUB": "EventStreamE2E", "QP_EVENT_STREAM_KEEPALIVE_S": str(KEEPALIVE_S)}
    host = start_platform_host(pg, azurite, tmp_path_factory.mktemp("sse") / "devhost.log", env=env)
    yield Platform(host, pg.root, pg.owner_url)
    host.stop()


def start(platform: Platform, steps: list[dict[str, Any]]) -> str:
    body = {"name": f"sse-{uuid.uuid4().hex[:8]}", "definition": {"target": "staging", "steps": steps}}
    created = httpx.post(f"{platform.base}/api/v1/intents", json=body, headers=platform.headers(AUTHOR))
    assert created.status_code == 201, created.text
    started = httpx.post(
        f"{platform.base}/api/v1/intents/{created.json()['id']}/execute", headers=platform.headers(AUTHOR), timeout=30
    )
    assert started.status_code == 202, started.text
    return str(started.json()["execution_id"])


def events_url(platform: Platform, execution_id: str) -> str:
    return f"{platform.base}/api/v1/executions/{execution_id}/events"


def stream(platform: Platform, execution_id: str, headers: dict[str, str] | None = None, **params: Any) -> Stream:
    with httpx.stream(
        "GET",
        events_url(platform, execution_id),
        params=params,
        headers={**platform.headers(READER), **SSE, **(headers or {})},
        timeout=60,
    ) as response:
        seen = Stream(response.status_code, response.headers.get("content-type", ""))
        if response.status_code != 200:
            response.read()
            seen.messages.append({"problem": response.json()})
            return seen
        return read_stream(response.iter_lines(), seen)


def page(platform: Platform, execution_id: str, after: int = 0) -> list[dict[str, Any]]:
    answer = httpx.get(
        events_url(platform, execution_id), params={"after": after}, headers=platform.headers(READER)
    ).json()
    return list(answer["items"])


def test_the_stream_carries_each_event_as_recorded_keeps_alive_and_ends_after_the_terminal_event(
    platform: Platform,
) -> None:
    execution_id = start(
        platform,
        [
            {"id": "gate", "action": "approval", "message": "go?"},
            {"id": "after", "action": "wait", "seconds": 0.1, "depends_on": ["gate"]},
        ],
    )
    seen = Stream(0, "")
    url = events_url(platform, execution_id)
    with httpx.stream("GET", url, headers={**platform.headers(READER), **SSE}, timeout=60) as response:
        seen.status, seen.content_type = response.status_code, response.headers["content-type"]
        assert response.headers["cache-control"].startswith("no-cache")
        assert response.headers["x-keep-alive-interval"] == str(KEEPALIVE_S)  # what a client's reads wait past
        lines = response.iter_lines()
        # The run waits for its approval: the open stream shows what happened so far, then only keep-alives.
        while not any(m["event"] == "approval_requested" for m in seen.messages):
            read_stream(lines, seen, stop_after=len(seen.messages) + 1)
        waited_from = len(seen.comments)
        time.sleep(4 * KEEPALIVE_S)
        decided = httpx.post(
            f"{url.removesuffix('/events')}/approvals/gate",
            json={"decision": "approve"},
            headers=platform.headers(["Intent.Approver"], oid=APPROVER),
        )
        assert decided.status_code == 200, decided.text
        read_stream(lines, seen)
    assert (seen.status, seen.content_type.partition(";")[0]) == (200, "text/event-stream")
    assert seen.ended and seen.messages[-1]["event"] == "execution_completed"
    assert seen.comments.count("keep-alive") - waited_from >= 2, seen.comments
    # Each message is the event of the JSON page: id its seq, event its type, data the same object.
    recorded = page(platform, execution_id)
    assert [m["data"] for m in seen.messages] == recorded
    assert [int(m["id"]) for m in seen.messages] == [e["seq"] for e in recorded]
    assert [m["event"] for m in seen.messages] == [e["type"] for e in recorded]


def test_a_stream_resumes_after_the_last_event_id_or_after(platform: Platform) -> None:
    execution_id = start(platform, [{"id": "pause", "action": "wait", "seconds": 0.1}])
    whole = stream(platform, execution_id)
    assert whole.ended and whole.messages[-1]["event"] == "execution_completed"
    middle = int(whole.messages[1]["id"])
    resumed = stream(platform, execution_id, headers={"Last-Event-ID": str(middle)})
    assert [m["data"] for m in resumed.messages] == [m["data"] for m in whole.messages[2:]]
    # Last-Event-ID (what a reconnecting client sends) wins over the URL's `after`, which it reuses.
    assert stream(platform, execution_id, headers={"Last-Event-ID": str(middle)}, after=0).messages == resumed.messages
    assert stream(platform, execution_id, after=middle).messages == resumed.messages
    bad = stream(platform, execution_id, headers={"Last-Event-ID": "1; DROP"})
    assert bad.status == 422 and bad.content_type == "application/problem+json"
    # The shape of every other 422: errors of a pointer and a detail.
    assert bad.messages[0]["problem"]["errors"] == [
        {"pointer": "/header/Last-Event-ID", "detail": "not an event number"}
    ]


def test_another_tenants_execution_is_not_found_and_streams_nothing(platform: Platform) -> None:
    execution_id = start(platform, [{"id": "pause", "action": "wait", "seconds": 0.1}])
    foreign = stream(platform, execution_id, headers=platform.headers(READER, tenant="fabrikam"))
    assert foreign.status == 404 and foreign.content_type == "application/problem+json"


def _client_connections(pg: Any) -> int:
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'quantum' AND backend_type = 'client backend'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_crowd_of_open_streams_holds_no_connection_each(platform: Platform, pg: Any) -> None:
    execution_id = start(platform, [{"id": "gate", "action": "approval"}])
    crowd, before = 60, _client_connections(pg)
    headers = {**platform.headers(READER), **SSE}
    opened = threading.Barrier(crowd + 1, timeout=60)
    ended: list[Stream] = []

    def hold_open() -> None:
        with httpx.stream("GET", events_url(platform, execution_id), headers=headers, timeout=60) as response:
            lines = response.iter_lines()
            seen = read_stream(lines, Stream(response.status_code, ""), stop_after=1)
            opened.wait()
            ended.append(read_stream(lines, seen))

    threads = [threading.Thread(target=hold_open, daemon=True) for _ in range(crowd)]
    for thread in threads:
        thread.start()
    opened.wait()  # every stream is open and has had its first event
    time.sleep(3 * KEEPALIVE_S)
    during = _client_connections(pg)
    cancelled = httpx.post(f"{platform.base}/api/v1/executions/{execution_id}/cancel", headers=platform.headers(AUTHOR))
    assert cancelled.status_code == 202, cancelled.text
    for thread in threads:
        thread.join(60)
    # The pool (10 by default) bounds what all of them use together; one connection per stream would be 60 more.
    assert during - before <= 10, (before, during)
    assert len(ended) == crowd
    assert all(s.status == 200 and s.ended and s.messages[-1]["event"] == "execution_cancelled" for s in ended)


def test_the_clients_stream_outlives_a_devhost_restart_by_reconnecting(pg: Any, azurite: Any, tmp_path: Path) -> None:
    from quantum_platform import Client, StaticToken

    def devhost(log: str, port: int) -> DevhostProcess:
        return start_platform_host(pg, azurite, tmp_path / log, port, env={"QP_TASK_HUB": "EventStreamRestartE2E"})

    host = devhost("first.log", free_port())
    platform = Platform(host, pg.root, pg.owner_url)
    execution_id = start(
        platform,
        [
            {"id": "gate", "action": "approval"},
            {"id": "after", "action": "wait", "seconds": 0.1, "depends_on": ["gate"]},
        ],
    )
    token = platform.headers(READER)["Authorization"].split()[1]
    received: list[dict[str, Any]] = []
    asked = threading.Event()

    def follow() -> None:
        with Client(host.base_url, credential=StaticToken(token)) as client:
            for event in client.stream(f"/api/v1/executions/{execution_id}/events"):
                received.append(event)
                if event["type"] == "approval_requested":
                    asked.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        assert asked.wait(30), received
        host.stop()  # the open stream breaks off; the client keeps trying while nothing listens on the port
        time.sleep(1.0)
        host = devhost("second.log", host.port)  # where the client reconnects: the port the first one listened on
        decided = httpx.post(
            f"{host.base_url}/api/v1/executions/{execution_id}/approvals/gate",
            json={"decision": "approve"},
            headers=platform.headers(["Intent.Approver"], oid=APPROVER),
        )
        assert decided.status_code == 200, decided.text
        reader.join(60)
        assert not reader.is_alive()
    finally:
        host.stop()
    # Every event once, in order, to the terminal one: the reconnect resumed after the last event it had.
    assert received[-1]["type"] == "execution_completed"
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))


LONG_KEEPALIVE_S = 4.0
"""A keep-alive interval longer than the client waits for a message unless the server says it (scaled below)."""


class _Counting(httpx.HTTPTransport):
    """A real transport that counts the requests sent through it."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def test_the_clients_stream_waits_as_long_as_the_servers_keepalive_says(
    pg: Any, azurite: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's answer names its keep-alive interval (a setting, up to 120 s) and the client's reads wait twice
    that: with the client's own bounds scaled below a 4 s keep-alive (opening a stream 2 s, the largest interval it
    assumes when none is named 1 s), a quiet stream is followed to its end on its one connection. Before, the client
    assumed the default 15 s, and a server set longer broke every quiet stream at the read timeout, reconnecting
    again and again."""
    import quantum_platform.client as client_module
    from quantum_platform import Client, StaticToken

    monkeypatch.setattr(client_module, "_POLL_WAIT_S", 1.5)
    monkeypatch.setattr(client_module, "_STREAM_READ_MARGIN_S", 0.5)
    monkeypatch.setattr(client_module, "_UNNAMED_KEEPALIVE_S", 1.0)
    env = {"QP_TASK_HUB": "EventStreamKeepAliveE2E", "QP_EVENT_STREAM_KEEPALIVE_S": str(LONG_KEEPALIVE_S)}
    host = start_platform_host(pg, azurite, tmp_path / "devhost.log", env=env)
    platform = Platform(host, pg.root, pg.owner_url)
    transport, asked = _Counting(), threading.Event()
    received: list[dict[str, Any]] = []
    try:
        execution_id = start(
            platform,
            [
                {"id": "gate", "action": "approval"},
                {"id": "after", "action": "wait", "seconds": 0.1, "depends_on": ["gate"]},
            ],
        )
        token = platform.headers(READER)["Authorization"].split()[1]

        def follow() -> None:
            with Client(host.base_url, credential=StaticToken(token), timeout=0.5, transport=transport) as client:
                for event in client.stream(f"/api/v1/executions/{execution_id}/events"):
                    received.append(event)
                    if event["type"] == "approval_requested":
                        asked.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert asked.wait(30), received
        time.sleep(1.5 * LONG_KEEPALIVE_S)  # quiet: keep-alives only, 4 s apart
        decided = httpx.post(
            f"{platform.base}/api/v1/executions/{execution_id}/approvals/gate",
            json={"decision": "approve"},
            headers=platform.headers(["Intent.Approver"], oid=APPROVER),
        )
        assert decided.status_code == 200, decided.text
        reader.join(60)
        assert not reader.is_alive()
    finally:
        host.stop()
    assert received[-1]["type"] == "execution_completed"
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert transport.sent == [f"GET /api/v1/executions/{execution_id}/events"]  # never reconnected


def test_a_tenant_holds_only_so_many_streams_open_and_others_are_not_affected(devhost_factory: Any, pg: Any) -> None:
    host = devhost_factory(
        app_dir=PROJECT_ROOT,
        env={"QP_EVENT_STREAMS_PER_TENANT": "3", "QP_EVENT_STREAM_KEEPALIVE_S": str(KEEPALIVE_S)},
        extra_args=("--seed-demo",),
    )
    platform = Platform(host, pg.root, pg.owner_url)
    waiting = start(platform, [{"id": "gate", "action": "approval"}])
    headers = {**platform.headers(READER), **SSE}
    readers: list[Iterator[str]] = []  # kept: a line iterator that is dropped closes its stream
    with contextlib.ExitStack() as streams:

        def open_one(url: str, with_headers: dict[str, str]) -> httpx.Response:
            response = streams.enter_context(httpx.stream("GET", url, headers=with_headers, timeout=30))
            if response.status_code == 200:
                readers.append(response.iter_lines())
                next(readers[-1])  # its body has begun: the stream counts
            return response

        held = [open_one(events_url(platform, waiting), headers) for _ in range(3)]
        assert [r.status_code for r in held] == [200, 200, 200]
        refused = open_one(events_url(platform, waiting), headers)
        refused.read()
        assert refused.status_code == 429 and refused.headers["retry-after"]
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/too-many-streams")
        # Another tenant's streams are not counted against this one's.
        other = platform.headers(AUTHOR, tenant="fabrikam")
        body = {
            "name": f"sse-{uuid.uuid4().hex[:8]}",
            "definition": {"target": "staging", "steps": [{"id": "gate", "action": "approval"}]},
        }
        intent = httpx.post(f"{platform.base}/api/v1/intents", json=body, headers=other).json()["id"]
        theirs = httpx.post(f"{platform.base}/api/v1/intents/{intent}/execute", headers=other, timeout=30)
        assert theirs.status_code == 202, theirs.text
        assert open_one(events_url(platform, theirs.json()["execution_id"]), {**other, **SSE}).status_code == 200
        # A stream that ends frees its place (noticed at its next write: a keep-alive at the latest).
        held[0].close()
        deadline = time.monotonic() + 30
        while (again := open_one(events_url(platform, waiting), headers)).status_code == 429:
            again.read()
            assert time.monotonic() < deadline, "the closed stream was never counted out"
            time.sleep(KEEPALIVE_S)
        assert again.status_code == 200
        # Nothing left running for the session's other tests (fabrikam's quotas are changed by some of them): the
        # cancels are waited for, since this devhost stops with the test and an unfinished cancel would stay so.
        ours = ((waiting, platform.headers(AUTHOR)), (theirs.json()["execution_id"], other))
        for execution_id, by in ours:
            cancelled = httpx.post(f"{platform.base}/api/v1/executions/{execution_id}/cancel", headers=by)
            assert cancelled.status_code == 202, cancelled.text
    for execution_id, by in ours:
        assert ended(platform, execution_id, by) == "cancelled"


def ended(platform: Platform, execution_id: str, headers: dict[str, str], timeout_s: float = 60) -> str:
    """The execution's status once it is terminal."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(httpx.get(f"{platform.base}/api/v1/executions/{execution_id}", headers=headers).json()["status"])
        if status in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"execution {execution_id} did not end within {timeout_s} s")
