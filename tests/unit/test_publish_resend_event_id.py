# intent_ref: platform.modules
"""An `event.emit` that timed out while its send went on, and the step's retry that sends it again, put one event id
on the hub: per attempt, the late copy and the retry's had two ids, and no consumer could tell them from two events."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest

from shared.events.publisher import AzureEventHubPublisher
from shared.modules import ModuleContext, StepFailed, run_module
from shared.modules.event_emit import EventEmitModule, event_id

BOUND_S = 20.0
"""The longest a test here waits for a thread; nothing here should take more than a second or two."""

TENANT = uuid.UUID("11111111-2222-3333-4444-555555555555")


class _Batch(list[Any]):
    def add(self, event: Any) -> None:
        self.append(event)


class _Hub:
    """What reached the hub, whichever producer sent it."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.arrived = threading.Condition()

    def take(self, batch: _Batch) -> None:
        with self.arrived:
            self.sent.extend(batch)
            self.arrived.notify_all()

    def wait_for(self, count: int) -> list[Any]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.sent) >= count, BOUND_S), f"{len(self.sent)} of {count} sent"
            return list(self.sent)


class _Producer:
    """A producer whose send goes through, or, `late`, goes through only once `released` whatever its `timeout` (the
    SDK's send after its link was lost opens the link again under its own waits)."""

    def __init__(self, hub: _Hub, *, late: bool) -> None:
        self.hub, self.late = hub, late
        self.sending, self.released = threading.Event(), threading.Event()

    def create_batch(self, *, partition_key: str | None = None) -> _Batch:
        return _Batch()

    def send_batch(self, batch: _Batch, *, timeout: float | None = None) -> None:
        self.sending.set()
        if self.late:
            self.released.wait(BOUND_S)
        self.hub.take(batch)

    def close(self) -> None:
        pass


class _Publisher(AzureEventHubPublisher):
    """The Azure publisher whose first producer sends late and whose later ones (a fresh link) send at once."""

    def __init__(self, hub: _Hub) -> None:
        super().__init__("example.servicebus.windows.net", credential=object())  # type: ignore[arg-type]
        self.built: list[_Producer] = []
        self.hub = hub

    def _producer(self, hub: str) -> tuple[Any, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                producer = _Producer(self.hub, late=not self.built)
                self.built.append(producer)
                self._producers[hub] = (producer, threading.Lock())  # type: ignore[assignment]
            return self._producers[hub]


def _attempt(attempt: int, deadline_in: float, execution: str, phase: Any = "run") -> ModuleContext:
    return ModuleContext(TENANT, execution, "announce", attempt, phase=phase, deadline=time.monotonic() + deadline_in)


def _emit(publisher: AzureEventHubPublisher, ctx: ModuleContext) -> Any:
    module = EventEmitModule(lambda: publisher)
    return run_module(module.action, ctx, {"type": "deploy.done", "data": {"v": 7}}, {module.action: module})


def test_a_late_send_and_the_retry_that_sends_again_carry_one_event_id() -> None:
    hub = _Hub()
    publisher = _Publisher(hub)
    execution = str(uuid.uuid4())
    # Attempt 1: its send is still going when the attempt's deadline passes; the step fails, retryable.
    with pytest.raises(StepFailed, match="not sent by its attempt's deadline") as timed_out:
        _emit(publisher, _attempt(1, 0.5, execution))
    assert timed_out.value.retryable
    [late] = publisher.built
    assert late.sending.is_set()
    late.released.set()  # ...and then it gets through all the same
    hub.wait_for(1)
    # Attempt 2, the step's retry, sends the event again.
    output = _emit(publisher, _attempt(2, BOUND_S, execution))
    copies = hub.wait_for(2)
    assert len(copies) == 2
    bodies = [json.loads(copy.body_as_str()) for copy in copies]
    ids = {body["id"] for body in bodies} | {copy.properties["event_id"] for copy in copies}
    assert ids == {output["event_id"]}, "the two copies have two ids: a consumer cannot tell them from two events"
    assert [body["data"] for body in bodies] == [{"v": 7}, {"v": 7}]


def test_one_event_id_for_every_attempt_of_a_step_and_its_own_for_the_compensation() -> None:
    execution = str(uuid.uuid4())
    run = {event_id(_attempt(attempt, 1, execution)) for attempt in (1, 2, 3, 7)}
    assert len(run) == 1
    compensate = {event_id(_attempt(attempt, 1, execution, "compensate")) for attempt in (1, 2)}
    assert len(compensate) == 1 and compensate != run
    # Another step, or another execution (a retried execution may run other parameters), is another event.
    other_step = ModuleContext(TENANT, execution, "announce-2", 1)
    assert event_id(other_step) not in run
    assert event_id(_attempt(1, 1, str(uuid.uuid4()))) not in run
    # The first attempt keeps the id it had when ids were per attempt (an event sent before the change).
    first = _attempt(1, 1, execution)
    assert run == {uuid.uuid5(uuid.UUID("6f1d3c5e-2b8a-5e4f-9a7c-0d2e4b6a8c1f"), first.idempotency_key)}
