# intent_ref: platform.events
"""One record of a send in flight serves the publisher's two needs: close() stops it, and, its caller gone while its
sender is stuck in the link's open, it is the one stranded and set aside. So a send set aside or stranded is one
close() stops, and once the SDK gives up it sends nothing, closes the producer set aside and leaves no record."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from shared.events import publisher as publishing
from shared.events.publisher import AzureEventHubPublisher, OutboundEvent, PublishTimeoutError

HUB = "platform-events"
BOUND_S = 20.0


class _Batch(list[Any]):
    def add(self, event: Any) -> None:
        self.append(event)


class _StuckOpen:
    """A producer whose link's open (its first batch) waits until `opens` is set, as against a hub that is away."""

    def __init__(self, opens: threading.Event) -> None:
        self.opens, self.sent, self.closed = opens, 0, threading.Event()

    def create_batch(self, *, partition_key: str | None = None) -> _Batch:
        assert self.opens.wait(BOUND_S)
        return _Batch()

    def send_batch(self, batch: _Batch, *, timeout: float | None = None) -> None:
        self.sent += 1

    def close(self) -> None:
        self.closed.set()


class _Publisher(AzureEventHubPublisher):
    def __init__(self) -> None:
        super().__init__("example.servicebus.windows.net", credential=object())  # type: ignore[arg-type]
        self.opens = threading.Event()
        self.built: list[_StuckOpen] = []

    def _producer(self, hub: str) -> tuple[Any, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                self.built.append(_StuckOpen(self.opens))
                self._producers[hub] = (self.built[-1], threading.Lock())  # type: ignore[assignment]
            return self._producers[hub]


def _until(condition: Any) -> None:
    ends = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < ends
        time.sleep(0.01)


def test_the_sends_set_aside_and_stranded_are_the_ones_close_stops() -> None:
    publisher = _Publisher()
    for _ in range(1 + publishing.SET_ASIDE_PER_HUB):  # the first set aside, the next stranded (the bound is taken)
        with pytest.raises(PublishTimeoutError):
            publisher.publish(HUB, [OutboundEvent({"n": 1}, "k", {})], timeout=0.2)
    in_flight = set(publisher._in_flight)
    assert len(in_flight) == 1 + publishing.SET_ASIDE_PER_HUB, "a send in flight was counted other than once"
    assert publisher._stranded[HUB] in in_flight, "the stranded send is not the record close() stops"
    assert {sending.turn for sending in in_flight if sending.set_aside} == set(publisher._set_aside), (
        "the sends set aside are not the records close() stops"
    )
    publisher.close()
    assert all(sending.given_up.is_set() for sending in in_flight)
    publisher.opens.set()  # the SDK's opens end: every stuck sender goes on, to find its send given up
    _until(lambda: publisher._in_flight == set() and publisher._stranded == {} and publisher._set_aside == {})
    _until(lambda: publisher._senders._value == publishing.SENDER_THREADS)
    assert [producer.sent for producer in publisher.built] == [0] * len(publisher.built)
    assert all(producer.closed.is_set() for producer in publisher.built)
