# intent_ref: platform.events
"""A timed publish tells a send that did not end on an open link (its partition's trouble, maybe that one alone) from
a hub that never let its link open: the first is `PartitionTimeoutError`, the second only `PublishTimeoutError`."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from azure.eventhub.exceptions import OperationTimeoutError

from shared.events.publisher import AzureEventHubPublisher, OutboundEvent, PartitionTimeoutError, PublishTimeoutError

HUB = "platform-events"
BOUND_S = 20.0


class _Batch(list[Any]):
    def add(self, event: Any) -> None:
        self.append(event)


class _Producer:
    """A link that opens (or never does, `opening`), whose sends end when told (or time out in the SDK)."""

    def __init__(self, *, opening: bool = False, sdk_timeout: bool = False) -> None:
        self.opening, self.sdk_timeout = opening, sdk_timeout
        self.release = threading.Event()

    def create_batch(self, *, partition_key: str | None = None) -> _Batch:
        if self.opening:
            self.release.wait(BOUND_S)
        return _Batch()

    def send_batch(self, batch: _Batch, *, timeout: float | None = None) -> None:
        if self.sdk_timeout:
            raise OperationTimeoutError("the partition did not answer")
        self.release.wait(BOUND_S)

    def close(self) -> None:
        pass


class _Publisher(AzureEventHubPublisher):
    def __init__(self, producer: _Producer) -> None:
        super().__init__("example.servicebus.windows.net", credential=object())  # type: ignore[arg-type]
        self.producer = producer

    def _producer(self, hub: str) -> tuple[Any, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                self._producers[hub] = (self.producer, threading.Lock())  # type: ignore[assignment]
            return self._producers[hub]


def _event() -> list[OutboundEvent]:
    return [OutboundEvent({"n": 1}, "tenant", {})]


def test_a_send_still_on_at_the_deadline_on_an_open_link_is_a_partition_timeout() -> None:
    producer = _Producer()
    try:
        with pytest.raises(PartitionTimeoutError):
            _Publisher(producer).publish(HUB, _event(), timeout=0.3)
    finally:
        producer.release.set()


def test_a_send_the_sdk_timed_out_is_a_partition_timeout() -> None:
    with pytest.raises(PartitionTimeoutError):
        _Publisher(_Producer(sdk_timeout=True)).publish(HUB, _event(), timeout=BOUND_S)


def test_a_link_that_never_opened_by_the_deadline_is_the_hubs_timeout() -> None:
    producer = _Producer(opening=True)
    try:
        with pytest.raises(PublishTimeoutError) as raised:
            _Publisher(producer).publish(HUB, _event(), timeout=0.3)
        assert not isinstance(raised.value, PartitionTimeoutError)
    finally:
        producer.release.set()
