# intent_ref: platform.modules
"""The storage and Event Hubs calls a module makes besides its write end by its attempt's deadline too: the
process's first check (locally, creation) of the artifacts container, the removal of an artifact whose tenant was
erased meanwhile, and the opening of a hub's producer link. Under their SDKs' own retries, a store or hub that was
away held the module thread (and its tenant's share of them, ADR 0038) for minutes after the worker had recorded the
attempt timed out (ADR 0026)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub import EventHubProducerClient
from azure.storage.blob import BlobServiceClient

from devhost.services import AZURITE_ACCOUNT, Azurite
from shared.config import Settings
from shared.events import publisher as publishing
from shared.events.publisher import PLATFORM_EVENTS_HUB, AzureEventHubPublisher, OutboundEvent, PublishTimeoutError
from shared.modules import StepFailed, artifact_write
from shared.modules.artifact_write import ArtifactWriteModule, bounded_by
from shared.modules.event_emit import EventEmitModule
from shared.storage import blob
from tests.integration.test_module_worker_claims import BOUND_S
from tests.integration.test_sdk_module_deadlines import (  # noqa: F401  # `silent`: the fixture
    _KEY,
    _ctx,
    _emit,
    _Run,
    _Silent,
    _write,
    silent,
)

pytestmark = pytest.mark.integration

DEADLINE_S = 3.0
"""The attempts' deadline here; unbounded, each of these calls held its thread for minutes (BOUND_S is 20 s)."""


def _settings(connection_string: str, container: str = "artifacts") -> Settings:
    return Settings.model_construct(
        QP_BLOB_CONNECTION_STRING=connection_string, QP_BLOB_ACCOUNT_URL=None, QP_ARTIFACTS_CONTAINER=container
    )


def _endpoint(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No artifacts container client made yet, as in a process that has just started."""
    monkeypatch.setattr(blob, "_containers", {})
    monkeypatch.setattr(blob, "_checked", set())


# --------------------------------------------------------------------------- the process's first container check
def test_the_first_artifact_write_of_a_process_checks_its_container_by_its_deadline(
    silent: _Silent,  # noqa: F811
    fresh_process: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: `exists()` under the SDK's policy, each of four tries waiting 60 s for an answer, 15 to 27 s apart.
    monkeypatch.setattr(artifact_write, "get_settings", lambda: _settings(_endpoint(silent.port)))
    module = ArtifactWriteModule()
    failure = _Run(_write(module, _ctx(deadline_in=DEADLINE_S))).failure()
    assert failure.retryable
    assert failure.message.startswith("the check of container 'artifacts' not done by its attempt's deadline")
    assert "Timeout" in failure.details["last"]
    [client] = blob._containers.values()
    # The next write checks again, bounded as well, with the process's one client.
    again = _Run(_write(module, _ctx(deadline_in=DEADLINE_S))).failure()
    assert again.retryable and "not done by its attempt's deadline" in again.message
    assert list(blob._containers.values()) == [client] and not blob._checked


def test_the_first_use_still_creates_the_container_and_keeps_one_client(azurite: Azurite, fresh_process: None) -> None:
    settings = _settings(azurite.connection_string, f"first-use-{uuid.uuid4().hex[:12]}")
    ctx = _ctx(deadline_in=BOUND_S)

    def away(what: str, call: Callable[..., Any], /) -> Any:  # noqa: ARG001
        raise StepFailed(f"{what} not done (storage away)")

    with pytest.raises(StepFailed, match="the check of container"):
        blob.artifacts_container(settings, within=away)
    [client] = blob._containers.values()
    # Once storage answers, the next caller's check creates the container, with the same client.
    assert blob.artifacts_container(settings, within=bounded_by(ctx)) is client
    assert client.exists()
    assert blob.artifacts_container(settings) is client
    direct = BlobServiceClient.from_connection_string(azurite.connection_string)
    assert direct.get_container_client(settings.QP_ARTIFACTS_CONTAINER).exists()
    client.delete_container()


# ------------------------------------------------------------------ an erased tenant's artifact, removed by its writer
class _StoresButNeverDeletes(BaseHTTPRequestHandler):
    """A store that takes a Put Blob and then goes away: a Delete Blob is never answered."""

    server: _Store

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(201)
        self.send_header("ETag", '"0x1"')
        self.send_header("Last-Modified", "Sun, 06 Dec 2026 12:00:00 GMT")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_DELETE(self) -> None:
        self.server.deletes.set()
        self.server.released.wait(BOUND_S * 20)  # longer than the test: the answer never comes


class _Store(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StoresButNeverDeletes)
        self.deletes = threading.Event()
        self.released = threading.Event()


@pytest.fixture
def store() -> Iterator[_Store]:
    server = _Store()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


def test_the_removal_of_an_erased_tenants_artifact_ends_within_its_window(
    store: _Store, process_pools: None, caplog: pytest.LogCaptureFixture
) -> None:
    # The tenant (never provisioned here) reads as erased between the upload and the look at its row. Before: the
    # delete under the SDK's policy, four tries of 60 s each. It is tried for REMOVAL_WINDOW_S at least (nobody else
    # removes it after the erasure's last pass); not removed, it is named for an operator, and the step fails for the
    # erasure, not retried.
    container = BlobServiceClient.from_connection_string(_endpoint(store.server_port)).get_container_client("artifacts")
    module = ArtifactWriteModule(lambda: container)
    with caplog.at_level("ERROR", logger="shared.tenants.offboarding"):
        failure = _Run(_write(module, _ctx(deadline_in=DEADLINE_S))).failure()
    assert store.deletes.is_set()
    assert not failure.retryable
    assert failure.message.endswith("was erased; the artifact is not kept")
    assert any("was not removed" in record.getMessage() for record in caplog.records)


def test_an_erased_tenants_artifact_is_removed_though_the_upload_spent_the_deadline(process_pools: None) -> None:
    # The upload answered just past the attempt's deadline: the removal was refused before its first try ("0 tries")
    # and the erased tenant's blob outlived its erasure for ever.
    class _Late:
        container_name = "artifacts"

        def __init__(self) -> None:
            self.deleted: list[str] = []

        def upload_blob(self, name: str, data: Any, **options: Any) -> None:
            time.sleep(DEADLINE_S + 0.5)

        def delete_blob(self, name: str, **options: Any) -> None:
            self.deleted.append(name)

    late = _Late()
    module = ArtifactWriteModule(lambda: late)  # type: ignore[arg-type,return-value]
    failure = _Run(_write(module, _ctx(deadline_in=DEADLINE_S))).failure()
    assert len(late.deleted) == 1
    assert not failure.retryable and failure.message.endswith("was erased; the artifact is not kept")


# ------------------------------------------------------------------------------------- the hub's producer link
class _LinkPublisher(AzureEventHubPublisher):
    """The Azure publisher with real producers, for a hub at `127.0.0.1:<port>` (the emulator's plain AMQP)."""

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", credential=None)
        self._port = port

    def _producer(self, hub: str) -> tuple[EventHubProducerClient, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                connection = (
                    f"Endpoint=sb://127.0.0.1:{self._port};SharedAccessKeyName=send;SharedAccessKey=a2V5;"
                    f"EntityPath={hub};UseDevelopmentEmulator=true"
                )
                self._producers[hub] = (EventHubProducerClient.from_connection_string(connection), threading.Lock())
            return self._producers[hub]


def test_an_event_emit_whose_hub_link_never_opens_ends_by_its_deadline(silent: _Silent) -> None:  # noqa: F811
    # Before: the first `create_batch` opened the link under the SDK's retries, with no timeout of the send's.
    publisher = _LinkPublisher(silent.port)
    module = EventEmitModule(lambda: publisher)
    failure = _Run(_emit(module, _ctx(deadline_in=DEADLINE_S))).failure()
    assert failure.retryable
    assert failure.message.startswith("event custom.deploy.done not sent by its attempt's deadline")
    assert "the hub did not answer" in failure.message
    # The stuck open's producer is set aside (ADR 0026): the next emit opens a fresh link (stuck as well against this
    # hub); past SET_ASIDE_PER_HUB, the one after waits for that one's turn no longer than its own deadline.
    again = _Run(_emit(module, _ctx(deadline_in=DEADLINE_S))).failure()
    assert again.retryable and "the hub did not answer" in again.message
    third = _Run(_emit(module, _ctx(deadline_in=DEADLINE_S))).failure()
    assert third.retryable and "still busy" in third.message


class _Producer:
    """A producer whose hub answers, or whose sends hang until `released` (a hub that is away)."""

    def __init__(self, *, hangs: bool = False) -> None:
        self.sent: list[list[Any]] = []
        self.sending = threading.Event()
        self.released = threading.Event()
        self._hangs = hangs

    def create_batch(self, *, partition_key: str | None = None) -> Any:  # noqa: ARG002
        return _Batch()

    def send_batch(self, batch: list[Any], *, timeout: float | None = None) -> None:  # noqa: ARG002
        self.sending.set()
        if self._hangs:
            self.released.wait(BOUND_S * 3)
        self.sent.append(batch)


class _Batch(list[Any]):
    def add(self, event: Any) -> None:
        self.append(event)


class _StandInPublisher(AzureEventHubPublisher):
    def __init__(self, producers: dict[str, _Producer]) -> None:
        super().__init__("example.servicebus.windows.net", credential=None)
        self.turns = {hub: threading.Lock() for hub in producers}
        self.stand_ins = producers

    def _producer(self, hub: str) -> tuple[Any, threading.Lock]:
        return self.stand_ins[hub], self.turns[hub]


def test_a_publish_with_a_timeout_sends_on_a_sender_and_gives_the_turn_back() -> None:
    producer = _Producer()
    publisher = _StandInPublisher({PLATFORM_EVENTS_HUB: producer})
    publisher.publish(
        PLATFORM_EVENTS_HUB, [OutboundEvent({"n": 1}, "t"), OutboundEvent({"n": 2}, "t")], timeout=BOUND_S
    )
    assert [[event.body_as_str() for event in batch] for batch in producer.sent] == [['{"n":1}', '{"n":2}']]
    assert publisher.turns[PLATFORM_EVENTS_HUB].acquire(blocking=False)


def test_a_publish_that_found_no_free_sender_gives_its_turn_back_and_never_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(publishing, "SENDER_THREADS", 1)
    away, other = _Producer(hangs=True), _Producer()
    publisher = _StandInPublisher({"away": away, "other": other})
    try:
        with pytest.raises(PublishTimeoutError):
            publisher.publish("away", [OutboundEvent("a")], timeout=0.5)  # its sender hangs on
        assert away.sending.is_set()
        with pytest.raises(PublishTimeoutError, match="not sent by its deadline"):
            publisher.publish("other", [OutboundEvent("b")], timeout=0.5)
        assert publisher.turns["other"].acquire(blocking=False)  # the queued send gave the turn back
        publisher.turns["other"].release()
    finally:
        away.released.set()
    # Once the sender is free, the queued send has been dropped: nothing of "other" goes out after its caller failed.
    publisher.publish("other", [OutboundEvent("c")], timeout=BOUND_S)
    assert [[event.body_as_str() for event in batch] for batch in other.sent] == [["c"]]


# A producer whose link never opens: `create_batch` blocks well past the caller's deadline, then says it finished (the
# words a process still running at that moment prints).
_EXITS_WHILE_A_SEND_HANGS = """
import sys, threading, time
from shared.events.publisher import AzureEventHubPublisher, OutboundEvent, PublishTimeoutError

class Producer:
    def create_batch(self, *, partition_key=None):
        time.sleep(5)
        print("the hung send finished", flush=True)
        raise RuntimeError("the link never opened")

class Publisher(AzureEventHubPublisher):
    def _producer(self, hub):
        return Producer(), turn

turn = threading.Lock()
try:
    Publisher("example.servicebus.windows.net").publish("away", [OutboundEvent("a")], timeout=0.5)
except PublishTimeoutError:
    print("the caller gave up", flush=True)
"""


def test_a_process_whose_send_hangs_exits_when_its_caller_has_given_up() -> None:
    # Before: the sender was an executor's worker, which the interpreter joins at exit: the process stayed until the
    # hung send returned (against a hub that is away, the SDK's minutes of retries).
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r})\n{_EXITS_WHILE_A_SEND_HANGS}"],
        capture_output=True,
        text=True,
        timeout=BOUND_S,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["the caller gave up"]  # gone before the send's thread was done


def test_close_stops_a_send_in_flight_after_its_current_batch() -> None:
    # Two partition keys, two batches: the first hangs until released, and the publisher is closed meanwhile.
    producer = _Producer(hangs=True)
    publisher = _StandInPublisher({PLATFORM_EVENTS_HUB: producer})
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            publisher.publish(
                PLATFORM_EVENTS_HUB, [OutboundEvent("a", "t1"), OutboundEvent("b", "t2")], timeout=BOUND_S
            )
        except BaseException as exc:
            failures.append(exc)

    caller = threading.Thread(target=publish, daemon=True)
    caller.start()
    assert producer.sending.wait(BOUND_S)
    publisher.close()
    producer.released.set()
    caller.join(BOUND_S)
    assert not caller.is_alive()
    [failure] = failures  # its caller does not read the unsent rest as sent
    assert isinstance(failure, PublishTimeoutError) and "publisher closed" in str(failure)
    assert [[event.body_as_str() for event in batch] for batch in producer.sent] == [["a"]]
    assert publisher.turns[PLATFORM_EVENTS_HUB].acquire(blocking=False)
