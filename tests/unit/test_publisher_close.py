# intent_ref: platform.events
"""The Azure publisher's close() stops every send in flight (timed, untimed, or waiting for its hub's turn) after its
current batch, and no failure on the way to a sender gives the hub's turn away for good."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from shared.events.publisher import AzureEventHubPublisher, OutboundEvent, PublishTimeoutError


class _Batch:
    """One event a batch, so that every event is a send of its own."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, data: Any) -> None:
        if self.items:
            raise ValueError("full")
        self.items.append(data)

    def __len__(self) -> int:
        return len(self.items)


class _Producer:
    """A producer whose sends wait at a gate; counts what it sent."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate, self.sent, self.entered = gate, 0, threading.Event()

    def create_batch(self, **_: Any) -> _Batch:
        return _Batch()

    def send_batch(self, batch: _Batch, **_: Any) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.sent += 1

    def close(self) -> None:
        pass


def _publisher(gate: threading.Event) -> tuple[AzureEventHubPublisher, _Producer]:
    publisher = AzureEventHubPublisher("namespace", credential=object())  # type: ignore[arg-type]
    producer = _Producer(gate)
    publisher._producers["hub"] = (producer, threading.Lock())  # type: ignore[assignment]
    return publisher, producer


def _events(count: int) -> list[OutboundEvent]:
    return [OutboundEvent(body={"n": n}, partition_key="k") for n in range(count)]


def _in_thread(call: Callable[[], None], errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the test looks at it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["untimed", "timed"])
def test_close_stops_a_send_in_flight_after_its_current_batch(timeout: float | None) -> None:
    gate = threading.Event()
    publisher, producer = _publisher(gate)
    errors: list[BaseException] = []
    sending = _in_thread(lambda: publisher.publish("hub", _events(3), timeout=timeout), errors)
    assert producer.entered.wait(5)
    publisher.close()
    gate.set()
    sending.join(10)
    assert producer.sent == 1
    assert len(errors) == 1 and isinstance(errors[0], PublishTimeoutError)


def test_close_stops_a_publish_waiting_for_its_hubs_turn() -> None:
    gate = threading.Event()
    publisher, producer = _publisher(gate)
    first: list[BaseException] = []
    waiting: list[BaseException] = []
    sending = _in_thread(lambda: publisher.publish("hub", _events(2), timeout=5.0), first)
    assert producer.entered.wait(5)
    queued = _in_thread(lambda: publisher.publish("hub", _events(3), timeout=5.0), waiting)
    time.sleep(0.2)  # the second publish waits for the hub's turn
    publisher.close()
    gate.set()
    sending.join(10)
    queued.join(10)
    assert producer.sent == 1, "a publish that waited for its turn sent on after close()"
    assert len(waiting) == 1 and isinstance(waiting[0], PublishTimeoutError)


def test_a_failure_while_waiting_for_a_sender_gives_the_hubs_turn_back() -> None:
    gate = threading.Event()
    gate.set()
    publisher, _ = _publisher(gate)

    class _Interrupted:
        def acquire(self, timeout: float | None = None) -> bool:
            raise KeyboardInterrupt

        def release(self) -> None:
            pass

    publisher._senders = _Interrupted()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        publisher.publish("hub", _events(1), timeout=1.0)
    assert not publisher._producers["hub"][1].locked(), "the hub's turn stayed taken"
    assert publisher._in_flight == set()
