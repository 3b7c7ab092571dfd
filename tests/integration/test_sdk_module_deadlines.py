# intent_ref: platform.modules
"""`artifact.write` and `event.emit` end by their attempt's deadline: bounded only by their SDKs' own retries, a store
or hub that was slow or away held the module thread (and its tenant's half of them, ADR 0038) for minutes after the
worker had recorded the attempt timed out (ADR 0026)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.eventhub.exceptions import OperationTimeoutError
from azure.storage.blob import BlobServiceClient, ContainerClient
from psycopg_pool import ConnectionPool

from devhost.services import AZURITE_ACCOUNT, Azurite
from shared.events.publisher import AzureEventHubPublisher, LocalEventHubPublisher
from shared.modules import ModuleContext, StepFailed, artifact_write, run_module
from shared.modules.artifact_write import ArtifactWriteModule
from shared.modules.contract import Abandoned
from shared.modules.event_emit import EventEmitModule
from tests.integration.test_builtin_modules import app_pool  # noqa: F401  # the fixture (the devhost's event log)
from tests.integration.test_module_worker_claims import BOUND_S

pytestmark = pytest.mark.integration

_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's well-known account key: the stand-in servers below check no signature."""
ARTIFACT = {"name": "report.json", "content": {"ok": True}}


def _ctx(deadline_in: float | None) -> ModuleContext:
    deadline = None if deadline_in is None else time.monotonic() + deadline_in
    return ModuleContext(uuid.uuid4(), str(uuid.uuid4()), "write", 1, deadline=deadline)


class _Run:
    """A module call on a thread of its own, as the worker runs it; `join` answers whether it gave its thread back."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.output: Any = None
        self._call = call
        self._thread = threading.Thread(target=self._target, daemon=True)
        self._thread.start()

    def _target(self) -> None:
        try:
            self.output = self._call()
        except BaseException as exc:  # the test looks at it
            self.error = exc

    def ended(self) -> bool:
        self._thread.join(BOUND_S)
        return not self._thread.is_alive()

    def failure(self) -> StepFailed:
        assert self.ended(), "the module still held its thread long after its attempt's deadline"
        assert isinstance(self.error, StepFailed), f"not a step failure: {self.error!r}"
        return self.error


# ------------------------------------------------------------------------------------ stand-ins for a blob store
class _Silent:
    """Accepts connections and never answers (a store that hangs)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)

    def close(self) -> None:
        self._listener.close()
        for conn in self.accepted:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    """Answers every request with the status its container is named after (`status-503`), after reading its body."""

    server: _Answering

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = int(self.path.split("/")[2].removeprefix("status-"))
        with self.server.lock:
            self.server.hits += 1
            self.server.paths.append(self.path)
        self.server.hit.set()
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_DELETE = do_GET = do_HEAD = _answer


class _Answering(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits = 0
        self.paths: list[str] = []
        self.hit = threading.Event()
        self.lock = threading.Lock()


@pytest.fixture
def silent() -> Iterator[_Silent]:
    server = _Silent()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def answering() -> Iterator[_Answering]:
    server = _Answering()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _container(port: int, name: str = "artifacts") -> ContainerClient:
    """A container client as the module's default one is made (the SDK's own retry policy and timeouts)."""
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )
    return BlobServiceClient.from_connection_string(connection).get_container_client(name)


def _write(module: ArtifactWriteModule, ctx: ModuleContext) -> Callable[[], Any]:
    return lambda: run_module(module.action, ctx, ARTIFACT, {module.action: module})


# ------------------------------------------------------------------------------------------------ artifact.write
def test_an_artifact_write_to_a_store_that_never_answers_ends_by_its_deadline(silent: _Silent) -> None:
    # Before: each try waited 60 s for an answer, then the SDK paused 15 s and tried again, three times.
    module = ArtifactWriteModule(lambda: _container(silent.port))
    failure = _Run(_write(module, _ctx(deadline_in=1))).failure()
    assert failure.retryable
    assert failure.message.startswith("artifact.write of 'report.json' not done by its attempt's deadline (1 try;")
    assert "Timeout" in failure.details["last"]


def test_an_artifact_write_to_an_unavailable_store_retries_until_its_deadline(answering: _Answering) -> None:
    # Before: the SDK paused 15 to 27 s between its tries, whatever the deadline.
    module = ArtifactWriteModule(lambda: _container(answering.server_port, "status-503"))
    failure = _Run(_write(module, _ctx(deadline_in=2))).failure()
    assert failure.retryable and "not done by its attempt's deadline" in failure.message
    # The SDK's retries are still made, within the deadline: a moment's unavailability is ridden out.
    assert failure.details["tries"] == answering.hits >= 2
    assert failure.details["last"].startswith("HttpResponseError")


def test_an_artifact_write_with_a_distant_deadline_retries_for_the_sdks_window_and_no_longer(
    answering: _Answering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step's timeout may be 30 days: the loop kept trying every 15 s for all of them, its thread held that long.
    monkeypatch.setattr(artifact_write, "MAX_BACKOFF_S", 0.01)
    monkeypatch.setattr(artifact_write, "MAX_RETRY_WINDOW_S", 0.5)
    module = ArtifactWriteModule(lambda: _container(answering.server_port, "status-503"))
    failure = _Run(_write(module, _ctx(deadline_in=30 * 86400))).failure()
    assert failure.retryable and "not done within 0.5 s of retries" in failure.message
    assert failure.details["tries"] == answering.hits >= 2
    # Nor is the service asked to keep at one try for the month: its `timeout` is bounded too.
    timeouts = {int(path.split("timeout=")[1].split("&")[0]) for path in answering.paths}
    assert timeouts == {artifact_write.MAX_SERVICE_TIMEOUT_S}, answering.paths


def test_a_short_outage_inside_a_normal_deadline_is_ridden_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # Four tries 1, 2 and 4 s apart gave up on a 7-second blip with 53 s of a 60 s deadline left (found by review).
    monkeypatch.setattr(artifact_write, "MAX_BACKOFF_S", 0.01)
    calls: list[dict[str, Any]] = []

    def flaky(**options: Any) -> str:
        calls.append(options)
        if len(calls) <= 6:
            raise ServiceRequestError("connection refused")
        return "written"

    assert artifact_write.within_deadline(_ctx(deadline_in=60), "artifact.write of 'x'", flaky) == "written"
    assert len(calls) == 7 and all(options["retry_total"] == 0 for options in calls)


def test_an_abandoned_artifact_write_stops_retrying_at_once(answering: _Answering) -> None:
    module = ArtifactWriteModule(lambda: _container(answering.server_port, "status-503"))
    ctx = _ctx(deadline_in=600)
    run = _Run(_write(module, ctx))
    assert answering.hit.wait(BOUND_S)
    ctx.abandoned.set()  # what the worker does once it no longer waits for the attempt (a cancel, say)
    failure = run.failure()
    assert isinstance(failure, Abandoned)
    assert failure.retryable and "not done when its attempt was abandoned" in failure.message


def test_an_artifact_write_refused_by_the_store_is_not_retried(answering: _Answering) -> None:
    module = ArtifactWriteModule(lambda: _container(answering.server_port, "status-403"))
    failure = _Run(_write(module, _ctx(deadline_in=600))).failure()
    # As before: the SDK's error, as an unexpected failure of the module; a refusal repeats, so one try.
    assert failure.message.startswith("artifact.write failed: HttpResponseError: Forbidden")
    assert answering.hits == 1


def test_an_artifact_removal_ends_by_its_deadline(silent: _Silent) -> None:
    module = ArtifactWriteModule(lambda: _container(silent.port))
    ctx = _ctx(deadline_in=1)
    params = module.parse(ARTIFACT)
    failure = _Run(lambda: module.compensate(ctx, params, {})).failure()
    assert failure.retryable
    assert failure.message.startswith("artifact.write's removal of 'report.json' not done by its attempt's deadline")


def test_an_artifact_write_with_a_deadline_stores_and_removes_as_before(
    azurite: Azurite, process_pools: None, new_tenant: Callable[[], uuid.UUID]
) -> None:
    # The per-call options reach a real store (the service's `timeout` too) and change nothing of the result.
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("deadlines")
    if not container.exists():
        container.create_container()
    module = ArtifactWriteModule(lambda: container)
    ctx = ModuleContext(new_tenant(), str(uuid.uuid4()), "write", 1, deadline=time.monotonic() + BOUND_S)
    output = run_module(module.action, ctx, ARTIFACT, {module.action: module})
    blob = container.get_blob_client(output["blob_name"])
    assert json.loads(blob.download_blob().readall()) == {"ok": True}
    assert blob.get_blob_properties().metadata["idempotency_key"] == ctx.idempotency_key
    module.compensate(ctx, module.parse(ARTIFACT), output)
    assert not blob.exists()
    module.compensate(ctx, module.parse(ARTIFACT), output)  # already gone: fine


# ---------------------------------------------------------------------------------------------------- event.emit
class _Batch(list[Any]):
    def add(self, event: Any) -> None:
        self.append(event)


class _HangingProducer:
    """An Event Hubs producer whose hub is away: a send waits until its `timeout` (the SDK's own: then
    OperationTimeoutError) or, without one, for the SDK's retries (minutes; here until the test ends)."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []
        self.released = threading.Event()

    def create_batch(self, *, partition_key: str | None = None) -> _Batch:  # noqa: ARG002
        return _Batch()

    def send_batch(self, batch: _Batch, *, timeout: float | None = None) -> None:  # noqa: ARG002
        self.timeouts.append(timeout)
        if not self.released.wait(timeout if timeout is not None else BOUND_S * 3):
            raise OperationTimeoutError("send timed out")


class _Publisher(AzureEventHubPublisher):
    """The Azure publisher with a stand-in producer for every hub."""

    def __init__(self, producer: _HangingProducer) -> None:
        super().__init__("example.servicebus.windows.net", credential=None)
        self.stand_in = producer
        self.turn = threading.Lock()

    def _producer(self, hub: str) -> tuple[Any, threading.Lock]:  # noqa: ARG002
        return self.stand_in, self.turn


@pytest.fixture
def hanging() -> Iterator[_HangingProducer]:
    producer = _HangingProducer()
    try:
        yield producer
    finally:
        producer.released.set()  # a send left behind by a failed assertion ends


def _emit(module: EventEmitModule, ctx: ModuleContext) -> Callable[[], Any]:
    return lambda: run_module(module.action, ctx, {"type": "deploy.done", "data": {}}, {module.action: module})


def test_an_event_emit_to_a_hub_that_is_away_ends_by_its_deadline(hanging: _HangingProducer) -> None:
    publisher = _Publisher(hanging)
    failure = _Run(_emit(EventEmitModule(lambda: publisher), _ctx(deadline_in=1))).failure()
    assert failure.retryable
    assert failure.message.startswith("event custom.deploy.done not sent by its attempt's deadline")
    [timeout] = hanging.timeouts
    assert timeout is not None and 0 < timeout <= 1  # the SDK's send (and its retries) got what was left


def test_an_event_emit_waiting_for_a_producer_held_by_a_hanging_send_ends_by_its_deadline(
    hanging: _HangingProducer,
) -> None:
    # A send without a deadline (the outbox relay's) holds the hub's producer through the SDK's retries; a module's
    # wait for its turn ended only with it, minutes past its own deadline.
    publisher = _Publisher(hanging)
    with publisher.turn:
        failure = _Run(_emit(EventEmitModule(lambda: publisher), _ctx(deadline_in=1))).failure()
    assert failure.retryable and "not sent by its attempt's deadline" in failure.message
    assert "still busy" in failure.message and hanging.timeouts == []


def test_an_event_emit_with_a_deadline_publishes_as_before(pg: Any, app_pool: ConnectionPool[Any]) -> None:  # noqa: F811
    publisher = LocalEventHubPublisher(app_pool)
    ctx = _ctx(deadline_in=BOUND_S)
    output = _Run(_emit(EventEmitModule(lambda: publisher), ctx))
    assert output.ended() and output.error is None
    with psycopg.connect(pg.owner_url) as conn:
        rows = conn.execute(
            "SELECT partition_key FROM devhost_eventhubs.events WHERE properties->>'event_id' = %s",
            (output.output["event_id"],),
        ).fetchall()
    assert rows == [(str(ctx.tenant_id),)]
