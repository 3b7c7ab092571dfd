# intent_ref: platform.modules
"""The built-in modules against real services: a local HTTP server, Azurite and the devhost's event log."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from psycopg_pool import ConnectionPool

from shared.config import get_settings
from shared.db.migrate import apply_migrations
from shared.events import LocalEventHubPublisher, OutboundEvent
from shared.modules import ModuleContext, StepFailed, run_module
from shared.modules.artifact_write import ArtifactWriteModule
from shared.modules.event_emit import EventEmitModule
from shared.modules.http_wait_healthy import HttpWaitHealthyModule, VerifyDeploymentModule
from shared.modules.ssrf import UrlRefused

pytestmark = pytest.mark.integration

LOCAL = ["127.0.0.1"]
BIG_ID_BODY = b'{"id": 18446744073709551615, "name": "thing"}'
"""A created resource's 64-bit unsigned id: beyond a bigint, so not recordable exactly as a JSON number."""
NOT_FINITE_BODIES = {
    "nan": b'{"score": NaN, "name": "thing"}',
    "infinity": b'{"limit": Infinity}',
    "minus-infinity": b'{"floor": -Infinity}',
    "overflow": b'{"ratio": 1e400}',
}
"""JSON bodies holding a number that is not finite (which Python's parser takes): not recordable as JSON at all."""
CREATED_BODIES: dict[str, tuple[str, bytes, str, str]] = {
    # name: (content type, body, the body recorded, the flag set)
    "big-id": ("application/json", BIG_ID_BODY, BIG_ID_BODY.decode(), "body_as_text"),
    "nul-escape": (
        "application/json",
        b'{"id": 1, "name": "a\\u0000b"}',
        '{"id": 1, "name": "a\\u0000b"}',
        "body_as_text",
    ),
    "lone-surrogate": (
        "application/json",
        b'{"id": 1, "name": "\\ud800"}',
        '{"id": 1, "name": "\\ud800"}',
        "body_as_text",
    ),
    "surrogate-name": ("application/json", b'{"\\udfff": 1}', '{"\\udfff": 1}', "body_as_text"),
    "deep": ("application/json", b"[" * 129 + b"]" * 129, "[" * 129 + "]" * 129, "body_as_text"),
    # Recorded one level inside the output, a body of exactly the accepted depth makes an output one level deeper.
    "deep-128": ("application/json", b"[" * 128 + b"]" * 128, "[" * 128 + "]" * 128, "body_as_text"),
    "very-deep": ("application/json", b"[" * 30000 + b"]" * 30000, "[" * 30000 + "]" * 30000, "body_as_text"),
    "raw-nul-text": ("text/plain", b"created\x00id 1", "created\ufffdid 1", "body_replaced"),
    "raw-nul-json": ("application/json", b'{"id": "1\x002"}', '{"id": "1\ufffd2"}', "body_replaced"),
    # Bytes its charset cannot decode, each replaced with U+FFFD: not the text sent either.
    "undecodable-text": ("text/plain; charset=utf-8", b"created \xff id 1", "created \ufffd id 1", "body_replaced"),
}
"""201 bodies an output cannot hold as they came: a JSON body holding what the module's boundary refuses (recorded as
its text, `body_as_text`), or text holding a NUL or bytes its charset cannot decode (recorded with U+FFFD in their
place, `body_replaced`)."""

DEEP_NOT_JSON_BODIES = {
    "never-closed": b"[" * 200,
    "never-closed-then-text": b"[" * 200 + b"oops",
    "closed-before-opened": b"]" * 200 + b"[" * 200,
}
"""Bodies labelled JSON that are not, their brackets deeper than an output holds but not balanced: their text is
recorded as a mislabelled body's is, not flagged `body_as_text` (which says the text is JSON kept as it came)."""


class Handler(BaseHTTPRequestHandler):
    """Routes for the tests; `server.hits` counts requests per path."""

    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        with self.server.lock:
            self.server.hits[path] = hits = self.server.hits.get(path, 0) + 1
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path == "/echo":
            echo = {
                "method": self.command,
                "query": query,
                "host": self.headers["Host"],
                "body": json.loads(body) if body else None,
                "auth": self.headers.get("Authorization"),
            }
            self._reply(200, json.dumps(echo).encode(), headers={"Set-Cookie": "s=1", "X-Request-Id": "r1"})
        elif path.startswith("/status/"):
            self._reply(int(path.rsplit("/", 1)[1]), b'{"error":"nope"}')
        elif path == "/redirect-metadata":
            self._reply(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif path == "/redirect-localhost":
            self._reply(302, headers={"Location": f"http://localhost:{self.server.server_port}/echo"})
        elif path == "/redirect-echo":
            self._reply(303, headers={"Location": "/echo?after=redirect"})
        elif path == "/loop":
            self._reply(302, headers={"Location": "/loop"})
        elif path.startswith("/created/"):
            content_type, created, _, _ = CREATED_BODIES[path.rsplit("/", 1)[1]]
            self._reply(201, created, content_type, headers={"Location": "/things/1"})
        elif path.startswith("/deep-not-json/"):
            self._reply(201, DEEP_NOT_JSON_BODIES[path.rsplit("/", 1)[1]], headers={"Location": "/things/1"})
        elif path.startswith("/not-finite/"):
            self._reply(201, NOT_FINITE_BODIES[path.rsplit("/", 1)[1]], headers={"Location": "/things/1"})
        elif path == "/big":
            self._reply(200, b"x" * (100 * 1024), "text/plain")
        elif path.startswith("/healthy-after/"):
            needed = int(path.rsplit("/", 1)[1])
            self._reply(200 if hits >= needed else 503, b"{}")
        else:
            self._reply(404)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class Server(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()


@pytest.fixture(scope="module", autouse=True)
def _local_settings(pg: Any, azurite: Any) -> Iterator[None]:
    """Settings as the devhost has them: the local server is on loopback, so private networks are open."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QP_DATABASE_URL", pg.app_url)
        mp.setenv("QP_DATABASE_CONTROL_URL", pg.control_url)
        mp.setenv("QP_BLOB_CONNECTION_STRING", azurite.connection_string)
        mp.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "true")
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    instance = Server()
    thread = threading.Thread(target=instance.serve_forever, daemon=True)
    thread.start()
    try:
        yield instance
    finally:
        instance.shutdown()
        instance.server_close()


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.server_port}"


def ctx(**settings: Any) -> ModuleContext:
    return ModuleContext(uuid.uuid4(), str(uuid.uuid4()), "step-1", 1, tenant_settings=settings)


class FakeClock:
    """Time that passes only when the module sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# --------------------------------------------------------------------------------------------- http.request
def test_http_request_happy_path(server: Server) -> None:
    params = {
        "method": "POST",
        "url": f"{base(server)}/echo",
        "query": {"a": "1"},
        "body": {"x": [1, 2]},
        "headers": {"Authorization": "Bearer t"},
    }
    output = run_module("http.request", ctx(allowed_hosts=LOCAL), params)
    assert output["status"] == 200
    assert output["body"] == {
        "method": "POST",
        "query": "a=1",
        "host": f"127.0.0.1:{server.server_port}",
        "body": {"x": [1, 2]},
        "auth": "Bearer t",
    }
    assert output["headers"]["x-request-id"] == "r1"
    assert "set-cookie" not in {k.lower() for k in output["headers"]}
    assert output["truncated"] is False


def test_http_request_unexpected_status(server: Server) -> None:
    with pytest.raises(StepFailed, match=r"answered 503, expected 2xx") as failure:
        run_module("http.request", ctx(allowed_hosts=LOCAL), {"url": f"{base(server)}/status/503"})
    assert failure.value.retryable and failure.value.details["status"] == 503
    with pytest.raises(StepFailed, match=r"answered 200, expected 201") as failure:
        run_module("http.request", ctx(allowed_hosts=LOCAL), {"url": f"{base(server)}/echo", "expect_status": [201]})
    assert failure.value.retryable is False  # a 4xx or an unexpected 2xx usually repeats
    output = run_module(
        "http.request", ctx(allowed_hosts=LOCAL), {"url": f"{base(server)}/status/404", "expect_status": [404]}
    )
    assert output["status"] == 404 and output["body"] == {"error": "nope"}


@pytest.mark.parametrize("name", sorted(CREATED_BODIES))
def test_http_request_body_an_output_cannot_hold_is_recorded_as_text_with_its_status(server: Server, name: str) -> None:
    # The upstream call has done its work (201 Created): refused at the module's boundary for its body, the step
    # failed, not retried, its status and headers lost, the message not saying the value came from the response.
    params = {"method": "POST", "url": f"{base(server)}/created/{name}", "expect_status": [201]}
    output = run_module("http.request", ctx(allowed_hosts=LOCAL), params)
    _, _, recorded, flag = CREATED_BODIES[name]
    assert output["status"] == 201 and output["headers"]["location"] == "/things/1"
    assert output["body"] == recorded and output[flag] is True
    assert {"body_as_text", "body_replaced"} & set(output) == {flag}  # the other flag is absent
    assert output["truncated"] is False


def test_http_request_json_body_an_output_can_hold_carries_no_flag(server: Server) -> None:
    # Within a bigint, the body stays JSON and carries no such flag.
    output = run_module("http.request", ctx(allowed_hosts=LOCAL), {"url": f"{base(server)}/echo"})
    assert isinstance(output["body"], dict) and "body_as_text" not in output and "body_replaced" not in output


@pytest.mark.parametrize("name", sorted(NOT_FINITE_BODIES))
def test_http_request_json_body_with_a_number_that_is_not_finite_is_recorded_as_its_exact_text(
    server: Server, name: str
) -> None:
    # Python's parser takes NaN, Infinity and -Infinity (and reads 1e400 as infinity), which no JSON output can hold:
    # the step failed "not JSON", not retried, after the upstream call had done its work, its status and headers lost.
    params = {"method": "POST", "url": f"{base(server)}/not-finite/{name}", "expect_status": [201]}
    output = run_module("http.request", ctx(allowed_hosts=LOCAL), params)
    assert output["status"] == 201 and output["headers"]["location"] == "/things/1"
    assert output["body"] == NOT_FINITE_BODIES[name].decode() and output["body_as_text"] is True
    assert output["truncated"] is False


@pytest.mark.parametrize("name", sorted(DEEP_NOT_JSON_BODIES))
def test_http_request_deep_brackets_that_do_not_balance_are_recorded_as_text_not_as_json(
    server: Server, name: str
) -> None:
    # Counted before the parse, their depth alone flagged them `body_as_text` (JSON kept as text): they are not JSON.
    params = {"method": "POST", "url": f"{base(server)}/deep-not-json/{name}", "expect_status": [201]}
    output = run_module("http.request", ctx(allowed_hosts=LOCAL), params)
    assert output["status"] == 201 and output["headers"]["location"] == "/things/1"
    assert output["body"] == DEEP_NOT_JSON_BODIES[name].decode()
    assert {"body_as_text", "body_replaced"} & set(output) == set()


def test_http_request_body_is_truncated(server: Server) -> None:
    output = run_module("http.request", ctx(allowed_hosts=LOCAL), {"url": f"{base(server)}/big"})
    assert output["truncated"] is True and output["body"] == "x" * 64 * 1024


def test_loopback_refused_without_the_allow_list(server: Server) -> None:
    before = dict(server.hits)
    with pytest.raises(StepFailed, match=r"127.0.0.1 resolves to a non-public address \(loopback\)") as failure:
        run_module("http.request", ctx(), {"url": f"{base(server)}/echo"})
    assert failure.value.retryable is False
    assert server.hits == before  # refused before connecting


def test_allow_listed_loopback_refused_when_private_networks_are_closed(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "false")
    get_settings.cache_clear()
    before = dict(server.hits)
    try:
        with pytest.raises(UrlRefused, match=r"non-public address \(loopback\) .*private networks"):
            run_module("http.request", ctx(allowed_hosts=LOCAL), {"url": f"{base(server)}/echo"})
        with pytest.raises(UrlRefused, match="private networks"):
            run_module("http.wait_healthy", ctx(allowed_hosts=LOCAL), {"url": f"{base(server)}/healthy-after/1"})
    finally:
        get_settings.cache_clear()
    assert server.hits == before  # refused before connecting


def test_redirects_are_rechecked(server: Server) -> None:
    allowed = ctx(allowed_hosts=LOCAL)
    with pytest.raises(UrlRefused, match="169.254.169.254.*cloud metadata"):
        run_module("http.request", allowed, {"url": f"{base(server)}/redirect-metadata"})
    with pytest.raises(UrlRefused, match=r"localhost resolves to a non-public address \(loopback\)"):
        run_module("http.request", allowed, {"url": f"{base(server)}/redirect-localhost"})
    with pytest.raises(StepFailed, match="more than 5 redirects"):
        run_module("http.request", allowed, {"url": f"{base(server)}/loop"})
    output = run_module(
        "http.request", allowed, {"method": "POST", "url": f"{base(server)}/redirect-echo", "body": {"dropped": True}}
    )
    assert output["body"]["method"] == "GET" and output["body"]["query"] == "after=redirect"
    assert output["body"]["body"] is None  # a 303 turns the POST into a GET without the body


# ---------------------------------------------------------------------------------------- http.wait_healthy
def test_wait_healthy_succeeds_after_polls(server: Server) -> None:
    clock = FakeClock()
    module = HttpWaitHealthyModule(sleep=clock.sleep, clock=clock)
    output = run_module(
        "http.wait_healthy",
        ctx(allowed_hosts=LOCAL),
        {"url": f"{base(server)}/healthy-after/3", "interval": 2, "timeout": 60},
        {"http.wait_healthy": module},
    )
    assert output["status"] == 200 and output["probes"] == 3 and output["elapsed_s"] == 4
    assert clock.sleeps == [2, 2]


def test_wait_healthy_times_out(server: Server) -> None:
    clock = FakeClock()
    module = HttpWaitHealthyModule(sleep=clock.sleep, clock=clock)
    with pytest.raises(StepFailed, match=r"not healthy after 10 s \(6 probes; last: status 503\)"):
        run_module(
            "http.wait_healthy",
            ctx(allowed_hosts=LOCAL),
            {"url": f"{base(server)}/status/503", "interval": 2, "timeout": 10},
            {"http.wait_healthy": module},
        )
    assert sum(clock.sleeps) == 10


def test_wait_healthy_does_not_wait_on_a_refused_url() -> None:
    clock = FakeClock()
    module = HttpWaitHealthyModule(sleep=clock.sleep, clock=clock)
    with pytest.raises(UrlRefused):
        run_module("http.wait_healthy", ctx(), {"url": "http://10.0.0.1/health"}, {"http.wait_healthy": module})
    assert clock.sleeps == []


def test_verify_deployment_uses_the_tenant_base_url(server: Server) -> None:
    clock = FakeClock()
    module = VerifyDeploymentModule(HttpWaitHealthyModule(sleep=clock.sleep, clock=clock))
    output = run_module(
        "verify-deployment",
        ctx(allowed_hosts=LOCAL, base_url=base(server) + "/"),
        {"health_check": "/healthy-after/2", "interval": 1},
        {"verify-deployment": module},
    )
    assert output["url"] == f"{base(server)}/healthy-after/2" and output["probes"] == 2
    with pytest.raises(StepFailed, match="needs a url"):
        run_module("verify-deployment", ctx(), {"health_check": "/health"}, {"verify-deployment": module})


# ------------------------------------------------------------------------------------------- artifact.write
@pytest.fixture(scope="module")
def container(azurite: Any) -> ContainerClient:
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("modules-test")
    if not client.exists():
        client.create_container()
    return client


def test_artifact_write_under_the_tenant_prefix(
    container: ContainerClient, process_pools: None, new_tenant: Any
) -> None:
    module = ArtifactWriteModule(lambda: container)
    context = ModuleContext(new_tenant(), str(uuid.uuid4()), "step-1", 1)
    params = {"name": "reports/result.json", "content": {"ok": True, "n": 3}}
    output = run_module("artifact.write", context, params, {"artifact.write": module})
    name = f"{context.tenant_id}/executions/{context.execution_id}/step-1/reports/result.json"
    assert output["container"] == "modules-test" and output["blob_name"] == name
    blob = container.get_blob_client(name)
    data = blob.download_blob().readall()
    assert json.loads(data) == {"ok": True, "n": 3} and output["size"] == len(data)
    properties = blob.get_blob_properties()
    assert properties.metadata["idempotency_key"] == context.idempotency_key
    assert properties.metadata["sha256"] == output["sha256"]
    assert properties.content_settings.content_type == "application/json"
    # A redelivered attempt writes the same bytes and gets the same reference.
    assert run_module("artifact.write", context, params, {"artifact.write": module}) == output
    module.compensate(context, module.parse(params), output)
    assert not blob.exists()
    module.compensate(context, module.parse(params), output)  # already gone: fine

    text = run_module(
        "artifact.write",
        context,
        {"name": "log.txt", "content": "héllo", "content_type": "text/plain"},
        {"artifact.write": module},
    )
    assert container.get_blob_client(text["blob_name"]).download_blob().readall() == "héllo".encode()


def test_artifact_write_refuses_escaping_names(container: ContainerClient) -> None:
    # Refused by the name's pattern (no segment ends with a dot) before the module's own check of its segments.
    with pytest.raises(StepFailed, match="name: String should match pattern"):
        run_module(
            "artifact.write",
            ctx(),
            {"name": "a/../../x", "content": 1},
            {"artifact.write": ArtifactWriteModule(lambda: container)},
        )


# ----------------------------------------------------------------------------------------------- event.emit
@pytest.fixture(scope="module")
def app_pool(pg: Any) -> Iterator[ConnectionPool[Any]]:
    apply_migrations(pg.owner_url, Path("devhost/eventhubs/migrations"), schema="devhost_eventhubs")
    pool: ConnectionPool[Any] = ConnectionPool(
        pg.app_url, kwargs={"autocommit": True}, min_size=1, max_size=2, open=True
    )
    try:
        yield pool
    finally:
        pool.close()


def test_event_emit_publishes_on_platform_events(pg: Any, app_pool: ConnectionPool[Any]) -> None:
    publisher = LocalEventHubPublisher(app_pool)
    module = EventEmitModule(lambda: publisher)
    context = ctx()
    output = run_module("event.emit", context, {"type": "deploy.done", "data": {"version": 7}}, {"event.emit": module})
    again = run_module("event.emit", context, {"type": "deploy.done", "data": {"version": 7}}, {"event.emit": module})
    assert again == output  # the same id: consumers deduplicate the redelivery
    with psycopg.connect(pg.owner_url) as conn:
        rows = conn.execute(
            "SELECT partition_key, body, properties FROM devhost_eventhubs.events"
            " WHERE hub = 'platform-events' AND properties->>'event_id' = %s",
            (output["event_id"],),
        ).fetchall()
    assert len(rows) == 2
    partition_key, body, properties = rows[0]
    assert partition_key == str(context.tenant_id)
    event = json.loads(bytes(body))
    assert event["id"] == output["event_id"] and event["type"] == "custom.deploy.done"
    assert event["data"] == {"version": 7} and event["execution_id"] == context.execution_id
    assert properties == {
        "event_id": output["event_id"],
        "event_type": "custom.deploy.done",
        "tenant_id": str(context.tenant_id),
        "execution_id": context.execution_id,
        "step_id": "step-1",
    }


def test_an_event_larger_than_event_hubs_takes_is_refused_before_its_send(
    pg: Any, app_pool: ConnectionPool[Any]
) -> None:
    publisher = LocalEventHubPublisher(app_pool)
    context = ctx()
    data = {"blob": "x" * 1_000_000}  # within the step's own bounds once resolved; past what Event Hubs takes
    with pytest.raises(StepFailed, match="an event may have at most 1000000") as refused:
        run_module(
            "event.emit", context, {"type": "big", "data": data}, {"event.emit": EventEmitModule(lambda: publisher)}
        )
    assert not refused.value.retryable  # no later attempt can send it
    with psycopg.connect(pg.owner_url) as conn:
        sent = conn.execute(
            "SELECT count(*) FROM devhost_eventhubs.events WHERE properties->>'execution_id' = %s",
            (context.execution_id,),
        ).fetchone()
    assert sent == (0,)


def test_event_emit_invalid_params() -> None:
    with pytest.raises(StepFailed, match="invalid parameters for event.emit: data: Input should be a valid dict"):
        run_module("event.emit", ctx(), {"type": "x", "data": [1]})


class _NullBody(OutboundEvent):
    """An event whose body is missing, which the log refuses."""

    def body_bytes(self) -> bytes:
        return None  # type: ignore[return-value]


def test_one_publish_appends_its_events_in_order_or_none_of_them(pg: Any, app_pool: ConnectionPool[Any]) -> None:
    publisher = LocalEventHubPublisher(app_pool)
    hub, run = "conformance-batch-order", uuid.uuid4().hex
    keyed = [OutboundEvent({"run": run, "n": n}, partition_key=run, properties={"n": n}) for n in range(5)]
    unkeyed = [OutboundEvent(f"{run}:{n}".encode()) for n in range(3)]
    publisher.publish(hub, keyed)
    publisher.publish(hub, unkeyed)
    # A body the log refuses (NULL) fails the whole publish: the event before it is not appended either.
    with pytest.raises(psycopg.errors.NotNullViolation):
        publisher.publish(hub, [OutboundEvent({"run": run, "n": 99}, partition_key=run), _NullBody({})])
    with psycopg.connect(pg.owner_url) as conn:
        rows = conn.execute(
            "SELECT partition_id, sequence_number, partition_key, body, properties FROM devhost_eventhubs.events"
            " WHERE hub = %s ORDER BY partition_id, sequence_number",
            (hub,),
        ).fetchall()
    mine = [row for row in rows if row[2] == run]
    assert len({row[0] for row in mine}) == 1  # one key, one partition
    assert [json.loads(bytes(row[3]))["n"] for row in mine] == [0, 1, 2, 3, 4]
    assert [row[4] for row in mine] == [{"n": n} for n in range(5)]
    bodies = sorted(bytes(row[3]).decode() for row in rows if row[2] is None)
    assert bodies == [f"{run}:{n}" for n in range(3)]


def test_a_publish_refuses_connections_that_would_hold_it_in_a_transaction(pg: Any) -> None:
    # One statement that commits by itself: on a connection that opens a transaction instead, the pool would roll
    # the append back on return, so the publish refuses before it writes anything.
    pool: ConnectionPool[Any] = ConnectionPool(pg.app_url, min_size=1, max_size=1, open=True)
    hub, run = "conformance-autocommit", uuid.uuid4().hex
    try:
        with pytest.raises(RuntimeError, match="autocommit"):
            LocalEventHubPublisher(pool).publish(hub, [OutboundEvent({"run": run}, partition_key=run)])
    finally:
        pool.close()
    with psycopg.connect(pg.owner_url) as conn:
        written = conn.execute("SELECT count(*) FROM devhost_eventhubs.events WHERE hub = %s", (hub,)).fetchone()
    assert written == (0,)
