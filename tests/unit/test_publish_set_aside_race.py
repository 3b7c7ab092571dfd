# intent_ref: platform.events
"""A send whose caller gave up is no longer stranded once it gives its hub's turn back: a publish waiting for that turn
sends on the producer, and a later publish must not set that producer aside (its stuck sender closing it under the
send) on the strength of the ended send."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from shared.events import publisher as publishing
from shared.events.publisher import AzureEventHubPublisher, OutboundEvent, PublishTimeoutError

HUB = "module-work"
BOUND_S = 20.0


class _Batch(list[Any]):
    def add(self, event: Any) -> None:
        self.append(event)


class _Producer:
    def __init__(self, *, stuck: bool) -> None:
        self.stuck = stuck
        self.released, self.closed = threading.Event(), threading.Event()
        self.sending, self.finish = threading.Event(), threading.Event()
        self.closed_mid_send = False

    def create_batch(self, *, partition_key: str | None = None) -> _Batch:
        if self.stuck and not self.released.wait(BOUND_S):
            raise RuntimeError("never opened")
        return _Batch()

    def send_batch(self, batch: _Batch, *, timeout: float | None = None) -> None:
        self.sending.set()
        self.finish.wait(BOUND_S)
        self.sending.clear()

    def close(self) -> None:
        if self.sending.is_set():
            self.closed_mid_send = True
        self.closed.set()


class _Publisher(AzureEventHubPublisher):
    def __init__(self, *stuck: bool) -> None:
        super().__init__("example.servicebus.windows.net", credential=object())  # type: ignore[arg-type]
        self.plan = list(stuck)
        self.built: list[_Producer] = []
        self.gate = threading.Event()
        """Holds the second producer's stranded sender between giving its turn back and `_sent`."""
        self.gate_passed = threading.Event()
        self.looked = threading.Event()
        """Set once the publish on the thread named "B" has looked for a stranded send to set aside."""

    def _set_aside_stranded(self, hub: str) -> None:
        super()._set_aside_stranded(hub)
        if threading.current_thread().name == "B":
            self.looked.set()

    def _producer(self, hub: str) -> tuple[Any, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                producer = _Producer(stuck=self.plan.pop(0) if self.plan else False)
                producer.finish.set()
                self.built.append(producer)
                self._producers[hub] = (producer, threading.Lock())  # type: ignore[assignment]
            return self._producers[hub]

    def _sent(self, sending: Any) -> None:
        if len(self.built) > 1 and sending.producer is self.built[1] and sending.set_aside is False:
            self.gate.wait(BOUND_S)
            super()._sent(sending)
            self.gate_passed.set()
            return
        super()._sent(sending)


def _event() -> list[OutboundEvent]:
    return [OutboundEvent({"n": 1}, "k", {})]


def _until(condition: Any) -> None:
    ends = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < ends
        time.sleep(0.01)


def test_a_producer_taken_by_a_waiting_publish_is_not_set_aside_and_closed_under_its_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(publishing, "_TURN_LOOK_S", 5.0)  # the waiting publish's slice spans the two ends below
    publisher = _Publisher(True, True)
    with pytest.raises(PublishTimeoutError):
        publisher.publish(HUB, _event(), timeout=0.3)  # producer 0 stuck: set aside
    with pytest.raises(PublishTimeoutError):
        publisher.publish(HUB, _event(), timeout=0.3)  # producer 1 stuck: stranded (the bound is taken)
    p0, p1 = publisher.built
    p1.finish.clear()  # the next send on producer 1 stays in flight until told
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            publisher.publish(HUB, _event(), timeout=BOUND_S)
        except BaseException as exc:
            errors.append(exc)

    a = threading.Thread(target=publish, name="A")
    a.start()
    time.sleep(0.3)  # A waits for producer 1's turn
    p0.released.set()  # the hub answers again: both stuck opens end
    _until(lambda: p0.closed.is_set() and publisher._set_aside == {})
    p1.released.set()
    _until(p1.sending.is_set)  # A took producer 1's turn as its stuck sender gave it back, and sends on it
    b = threading.Thread(target=publish, name="B")
    b.start()
    _until(publisher.looked.is_set)  # B looked for a stranded send: there is none, A's producer is the hub's
    publisher.gate.set()
    _until(publisher.gate_passed.is_set)  # the stuck sender is done: it closes only a producer set aside
    p1.finish.set()  # A's send ends; B sends next, in its turn
    a.join(BOUND_S)
    b.join(BOUND_S)
    assert not p1.closed_mid_send, "the producer a publish was sending on was set aside and closed under its send"
    assert not p1.closed.is_set(), "the producer the hub's publishes send on was closed"
    assert errors == []
    assert publisher.built == [p0, p1]  # B sent on the hub's producer, in its turn after A's
