# intent_ref: platform.events
"""A send stuck in its producer's link open, whose caller gave up at its deadline, does not hold its hub's later
publishes hostage: its producer is set aside (at most SET_ASIDE_PER_HUB per hub) and they send on a fresh one; the one
set aside is closed by its sender once the open ends, having sent nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.events import publisher as publishing
from shared.events.publisher import AzureEventHubPublisher, OutboundEvent, PublishTimeoutError

BOUND_S = 20.0
"""The longest a test here waits for a thread; nothing here should take more than a second or two."""


class _Batch(list[Any]):
    def add(self, event: Any) -> None:
        self.append(event)


class _Producer:
    """A producer whose link opens (at its first `create_batch`) at once, or, `stuck`, only once `released` (the SDK
    opens it under its own waits, minutes against a hub that accepts and never answers, whatever a send's timeout)."""

    def __init__(self, *, stuck: bool) -> None:
        self.stuck = stuck
        self.opening, self.released, self.closed = threading.Event(), threading.Event(), threading.Event()
        self.sent: list[list[str]] = []

    def create_batch(self, *, partition_key: str | None = None) -> _Batch:
        self.opening.set()
        if self.stuck and not self.released.wait(BOUND_S * 3):
            raise RuntimeError("the link never opened")
        return _Batch()

    def send_batch(self, batch: _Batch, *, timeout: float | None = None) -> None:
        self.sent.append([event.body_as_str() for event in batch])

    def close(self) -> None:
        self.closed.set()


class _Publisher(AzureEventHubPublisher):
    """The Azure publisher building its producers from `stuck` (one flag per producer built, then: not stuck)."""

    def __init__(self, *stuck: bool) -> None:
        super().__init__("example.servicebus.windows.net", credential=object())  # type: ignore[arg-type]
        self.plan = list(stuck)
        self.built: list[_Producer] = []

    def _producer(self, hub: str) -> tuple[Any, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                producer = _Producer(stuck=self.plan.pop(0) if self.plan else False)
                self.built.append(producer)
                self._producers[hub] = (producer, threading.Lock())  # type: ignore[assignment]
            return self._producers[hub]

    def release_all(self) -> None:
        for producer in self.built:
            producer.released.set()


@pytest.fixture
def publishers() -> Iterator[Callable[..., _Publisher]]:
    made: list[_Publisher] = []

    def make(*stuck: bool) -> _Publisher:
        made.append(_Publisher(*stuck))
        return made[-1]

    try:
        yield make
    finally:
        for publisher in made:  # a send left behind by a failed assertion ends
            publisher.release_all()


def _in_thread(call: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the test looks at it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _eventually(condition: Callable[[], bool]) -> None:
    """Waits (at most BOUND_S) for what a sender thread does after the event a test waited for."""
    ends = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < ends, "not within BOUND_S"
        time.sleep(0.01)


def _senders_free(publisher: AzureEventHubPublisher) -> int:
    return publisher._senders._value  # type: ignore[attr-defined]


def test_a_publish_after_a_stuck_link_open_sends_on_a_fresh_producer(publishers: Callable[..., _Publisher]) -> None:
    # Before: the stuck sender kept the hub's turn until the SDK gave up, and this publish failed "still busy".
    publisher = publishers(True)
    with pytest.raises(PublishTimeoutError, match="the hub did not answer"):
        publisher.publish("hub", [OutboundEvent("a")], timeout=0.5)
    stuck = publisher.built[0]
    assert stuck.opening.is_set() and not stuck.released.is_set()
    publisher.publish("hub", [OutboundEvent("b")], timeout=BOUND_S)
    stuck_one, fresh = publisher.built
    assert fresh.sent == [["b"]]
    # The stuck open ends at last: the send that was given up sends nothing, and its producer (link) is closed.
    stuck_one.released.set()
    assert stuck_one.closed.wait(BOUND_S)
    assert stuck_one.sent == [] and not fresh.closed.is_set()
    publisher.publish("hub", [OutboundEvent("c")], timeout=BOUND_S)
    assert fresh.sent == [["b"], ["c"]] and len(publisher.built) == 2


def test_a_publish_waiting_for_the_stuck_turn_takes_the_fresh_producers(publishers: Callable[..., _Publisher]) -> None:
    # Before: a publish already waiting for the stuck sender's turn waited on it until its own deadline.
    publisher = publishers(True)
    first, first_errors = _in_thread(lambda: publisher.publish("hub", [OutboundEvent("a")], timeout=1.0))
    assert publisher.built and publisher.built[0].opening.wait(BOUND_S)
    second, second_errors = _in_thread(lambda: publisher.publish("hub", [OutboundEvent("b")], timeout=BOUND_S))
    first.join(BOUND_S)
    second.join(BOUND_S)
    assert not first.is_alive() and not second.is_alive()
    assert len(first_errors) == 1 and "the hub did not answer" in str(first_errors[0])
    assert second_errors == []
    assert publisher.built[1].sent == [["b"]]


def test_set_aside_producers_are_bounded_per_hub(publishers: Callable[..., _Publisher]) -> None:
    # A hub stuck everywhere: one producer set aside, a fresh one stuck as well, and then the publishes wait for that
    # one's turn (by their deadlines) instead of building a link and taking a sender thread each.
    publisher = publishers(True, True)
    for _ in range(2):
        with pytest.raises(PublishTimeoutError, match="the hub did not answer"):
            publisher.publish("hub", [OutboundEvent("a")], timeout=0.3)
    for _ in range(2):
        with pytest.raises(PublishTimeoutError, match="still busy"):
            publisher.publish("hub", [OutboundEvent("b")], timeout=0.3)
    assert len(publisher.built) == 1 + publishing.SET_ASIDE_PER_HUB
    assert _senders_free(publisher) == publishing.SENDER_THREADS - len(publisher.built)
    # Another hub is not held up by it.
    publisher.publish("other", [OutboundEvent("c")], timeout=BOUND_S)
    assert publisher.built[-1].sent == [["c"]]
    # Once the opens end, the producer set aside is closed and its sender thread free; the current one serves again.
    set_aside, current = publisher.built[:2]
    publisher.release_all()
    assert set_aside.closed.wait(BOUND_S)
    # Nothing is left behind: no producer set aside, no send given up, every sender thread free.
    _eventually(lambda: publisher._set_aside == {} and publisher._stranded == {})
    _eventually(lambda: _senders_free(publisher) == publishing.SENDER_THREADS)
    publisher.publish("hub", [OutboundEvent("d")], timeout=BOUND_S)
    assert current.sent == [["d"]] and set_aside.sent == [] and not current.closed.is_set()


def test_a_stuck_producer_is_set_aside_once_the_bound_allows(publishers: Callable[..., _Publisher]) -> None:
    # The second stuck producer could not be set aside when its caller gave up (the first still was); once the first
    # is closed, the next publish sets the second aside and sends on a third.
    publisher = publishers(True, True)
    for _ in range(2):
        with pytest.raises(PublishTimeoutError, match="the hub did not answer"):
            publisher.publish("hub", [OutboundEvent("a")], timeout=0.3)
    first, second = publisher.built
    first.released.set()
    assert first.closed.wait(BOUND_S)
    publisher.publish("hub", [OutboundEvent("b")], timeout=BOUND_S)
    third = publisher.built[2]
    assert third.sent == [["b"]] and not second.released.is_set()
    second.released.set()
    assert second.closed.wait(BOUND_S) and second.sent == []


def test_a_closed_publisher_builds_no_producer_for_a_publish_that_waited(publishers: Callable[..., _Publisher]) -> None:
    publisher = publishers(True)
    with pytest.raises(PublishTimeoutError, match="the hub did not answer"):
        publisher.publish("hub", [OutboundEvent("a")], timeout=0.3)
    publisher.close()
    with pytest.raises(PublishTimeoutError, match="closed"):
        publisher.publish("hub", [OutboundEvent("b")], timeout=BOUND_S)
    assert len(publisher.built) == 1
