# intent_ref: platform.modules
"""`event.emit` against a real producer whose link open is stuck (a hub that accepts the connection and never
answers): the step's retry is not held hostage by the stuck open (it sends on a fresh producer), it sends under the
event id of the attempt that gave up, and a hub that stays silent takes at most 1 + SET_ASIDE_PER_HUB links."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from azure.eventhub import EventHubProducerClient

from shared.events import publisher as publishing
from shared.events.publisher import PLATFORM_EVENTS_HUB, AzureEventHubPublisher
from shared.modules import ModuleContext
from shared.modules.event_emit import EventEmitModule, event_id
from tests.integration.test_module_worker_claims import BOUND_S
from tests.integration.test_sdk_module_deadlines import _emit, _Run, _Silent, silent  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

DEADLINE_S = 3.0
"""The attempts' deadline here; the SDK's own open against a silent hub lasts minutes."""


class _Batch(list[Any]):
    def add(self, event: Any) -> None:
        self.append(event)


class _Answering:
    """A producer whose hub answers (a fresh link to a hub that is back, or whose stuck link was a one-off)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def create_batch(self, *, partition_key: str | None = None) -> _Batch:
        return _Batch()

    def send_batch(self, batch: _Batch, *, timeout: float | None = None) -> None:
        self.sent.extend(batch)

    def close(self) -> None:
        pass


class _Publisher(AzureEventHubPublisher):
    """The Azure publisher whose producers are real ones for the silent hub at `127.0.0.1:<port>` (the emulator's plain
    AMQP), as many as `silent_links`, then ones whose hub answers."""

    def __init__(self, port: int, silent_links: int) -> None:
        super().__init__("127.0.0.1", credential=None)
        self._port, self._silent_links = port, silent_links
        self.built: list[Any] = []

    def _producer(self, hub: str) -> tuple[EventHubProducerClient, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                producer: Any = _Answering()
                if len(self.built) < self._silent_links:
                    producer = EventHubProducerClient.from_connection_string(
                        f"Endpoint=sb://127.0.0.1:{self._port};SharedAccessKeyName=send;SharedAccessKey=a2V5;"
                        f"EntityPath={hub};UseDevelopmentEmulator=true"
                    )
                self.built.append(producer)
                self._producers[hub] = (producer, threading.Lock())
            return self._producers[hub]


def _attempt(execution: str, attempt: int) -> ModuleContext:
    return ModuleContext(uuid.UUID(int=7), execution, "announce", attempt, deadline=time.monotonic() + DEADLINE_S)


def _eventually(condition: Callable[[], bool]) -> bool:
    ends = time.monotonic() + BOUND_S * 3
    while not condition():
        if time.monotonic() >= ends:
            return False
        time.sleep(0.05)
    return True


def test_the_retry_of_an_emit_stuck_in_its_link_open_sends_on_a_fresh_link_under_the_same_id(
    silent: _Silent,  # noqa: F811
) -> None:
    # Before: the retry waited for the stuck open's turn and failed "still busy" (and, had it sent, under another id).
    publisher = _Publisher(silent.port, silent_links=1)
    module = EventEmitModule(lambda: publisher)
    execution = str(uuid.uuid4())
    failure = _Run(_emit(module, _attempt(execution, 1))).failure()
    assert failure.retryable and "the hub did not answer" in failure.message
    retry = _Run(_emit(module, _attempt(execution, 2)))
    assert retry.ended() and retry.error is None, f"the retry failed: {retry.error!r}"
    stuck, fresh = publisher.built
    assert isinstance(stuck, EventHubProducerClient) and publisher._set_aside != {}
    [sent] = fresh.sent
    assert sent.properties["event_id"] == retry.output["event_id"] == str(event_id(_attempt(execution, 1)))
    # The stuck open ends once the hub goes away for good (the SDK's retries are refused): its producer is closed and
    # its sender thread freed.
    silent._listener.shutdown(socket.SHUT_RDWR)  # wakes its accept, so no later try is taken and left silent
    silent.close()
    assert _eventually(lambda: publisher._set_aside == {}), "the producer set aside was never closed"
    assert _eventually(lambda: publisher._senders._value == publishing.SENDER_THREADS)  # type: ignore[attr-defined]


def test_a_hub_that_stays_silent_takes_a_bounded_number_of_links(silent: _Silent) -> None:  # noqa: F811
    publisher = _Publisher(silent.port, silent_links=10)
    module = EventEmitModule(lambda: publisher)
    execution = str(uuid.uuid4())
    for attempt in range(1, 1 + publishing.SET_ASIDE_PER_HUB + 1):
        failure = _Run(_emit(module, _attempt(execution, attempt))).failure()
        assert failure.retryable and "the hub did not answer" in failure.message
    # Past the bound, a publish waits for the current (stuck) producer's turn no longer than its own deadline.
    again = _Run(_emit(module, _attempt(execution, 9))).failure()
    assert again.retryable and "still busy" in again.message
    assert len(publisher.built) == 1 + publishing.SET_ASIDE_PER_HUB
    assert [hub for hub in publisher._set_aside.values()] == [PLATFORM_EVENTS_HUB] * publishing.SET_ASIDE_PER_HUB
    silent._listener.shutdown(socket.SHUT_RDWR)  # the stuck opens end (refused) rather than outlive the test
