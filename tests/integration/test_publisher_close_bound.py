# intent_ref: platform.events
"""The Azure publisher's close() returns within its bound whatever its links do: a real producer whose link open is
stuck (a hub that accepts the connection and never answers) holds the SDK's own close for minutes, and close() runs as
the process stops or restarts."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from azure.eventhub import EventHubProducerClient

from shared.events.publisher import AzureEventHubPublisher, OutboundEvent
from tests.integration.test_module_worker_claims import BOUND_S
from tests.integration.test_sdk_module_deadlines import _Silent, silent  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

STUCK_HUB = "stuck"
"""The hub whose producer is a real one for the silent hub; every other hub's producer answers."""


class _Batch(list[Any]):
    def add(self, event: Any) -> None:
        self.append(event)


class _Answering:
    """A producer whose hub answers; it records its close."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def create_batch(self, *, partition_key: str | None = None) -> _Batch:
        return _Batch()

    def send_batch(self, batch: _Batch, *, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        self.closed.set()


class _Publisher(AzureEventHubPublisher):
    """The Azure publisher, its producer for STUCK_HUB a real one for the silent hub at `127.0.0.1:<port>` (the
    emulator's plain AMQP)."""

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", credential=None)
        self._port = port
        self.built: dict[str, Any] = {}

    def _producer(self, hub: str) -> tuple[EventHubProducerClient, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                producer: Any = _Answering()
                if hub == STUCK_HUB:
                    producer = EventHubProducerClient.from_connection_string(
                        f"Endpoint=sb://127.0.0.1:{self._port};SharedAccessKeyName=send;SharedAccessKey=a2V5;"
                        f"EntityPath={hub};UseDevelopmentEmulator=true"
                    )
                self.built[hub] = producer
                self._producers[hub] = (producer, threading.Lock())
            return self._producers[hub]


def _eventually(condition: Callable[[], bool]) -> bool:
    ends = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() >= ends:
            return False
        time.sleep(0.05)
    return True


def test_close_returns_while_a_producers_link_open_is_stuck_and_still_closes_the_others(
    silent: _Silent,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = _Publisher(silent.port)
    publisher.publish("answers", [OutboundEvent(b"before")])
    # An untimed publish (the module-work dispatch's) stuck in the link's open, which holds the producer's lock.
    failed: list[BaseException] = []

    def publish() -> None:
        try:
            publisher.publish(STUCK_HUB, [OutboundEvent(b"never")])
        except BaseException as exc:  # its hub never answered: the test looks at it
            failed.append(exc)

    stuck = threading.Thread(target=publish, name="stuck-publish", daemon=True)
    stuck.start()
    try:
        assert _eventually(lambda: bool(silent.accepted)), "the producer never opened its connection to the hub"
        before = set(threading.enumerate())
        closer = threading.Thread(target=publisher.close, name="closing", daemon=True)
        with caplog.at_level(logging.WARNING, logger="shared.events.publisher"):
            closer.start()
            closer.join(BOUND_S)
        assert not closer.is_alive(), (
            f"close() had not returned after {BOUND_S:g} s: it waited for the producer whose link open is stuck"
            " (the SDK holds it for minutes), holding the process's exit"
        )
        assert publisher.built["answers"].closed.is_set(), "the producer whose hub answers was not closed"
        left = [t.name for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
        assert left == [], f"close() left threads that hold the process's exit: {left}"
        assert any(STUCK_HUB in r.getMessage() and "did not close" in r.getMessage() for r in caplog.records)
    finally:
        # The stuck open ends once the hub goes away for good (the SDK's retries are refused).
        silent._listener.shutdown(socket.SHUT_RDWR)
        silent.close()
    stuck.join(BOUND_S * 3)
    assert not stuck.is_alive() and failed, "the stuck publish never ended once the hub was gone"
