# intent_ref: platform.telemetry
"""A `module-work` batch's wait on the hub counts from when each item first went on it: a handed-back item carries
that time (ADR 0048), and its lag does not start again at every hand-back; a batch's items go back in one send to the
partition they came from."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.engine import work_hub
from shared.engine.protocol import WorkItem
from shared.engine.work_hub import FIRST_ENQUEUED, Carried
from shared.observability import metrics, received
from shared.observability.tracing import TRACEPARENT


class _Event:
    """The shape azure.functions.EventHubEvent has for a `cardinality many` batch."""

    def __init__(self, body: bytes, metadata: dict[str, Any], enqueued: datetime | None) -> None:
        self._body, self.metadata, self.enqueued_time = body, metadata, enqueued
        self.sequence_number = 1

    def get_body(self) -> bytes:
        return self._body


def test_a_handed_back_items_wait_counts_from_when_it_first_went_on_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    lags: list[float] = []
    monkeypatch.setattr(metrics, "module_work_lag", lambda action, lag_s: lags.append(lag_s))
    now = datetime.now(UTC)  # at the test, not at the module's import: the suite runs for minutes
    first = now - timedelta(minutes=10)
    properties = [
        {
            "action": "event.emit",
            TRACEPARENT: "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
            FIRST_ENQUEUED: first.isoformat(),
        },
        {"action": "event.emit"},
        {"action": "event.emit", FIRST_ENQUEUED: "not a time"},
    ]
    metadata = {"PropertiesArray": properties}
    just_now = now - timedelta(seconds=1)
    batch = received.received_work(
        [_Event(b"a", metadata, just_now), _Event(b"b", metadata, just_now), _Event(b"c", metadata, None)]
    )
    assert batch.bodies == [b"a", b"b", b"c"]
    assert batch.traceparents == [properties[0][TRACEPARENT], None, None]
    assert batch.first_enqueued == [first.isoformat(), just_now.isoformat(), None]
    # Ten minutes for the handed-back one, not the second since its last hand-back; a value that is no time is
    # passed by, and an event without its own time is not measured.
    assert len(lags) == 2 and 599 < lags[0] < 700 and 0.9 < lags[1] < 60


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], float | None]] = []

    def publish(self, hub: str, events: list[Any], *, timeout: float | None = None) -> None:
        self.sent.append((hub, list(events), timeout))


def test_a_batch_is_handed_back_in_one_send_to_its_partition_each_item_with_what_it_came_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = _Publisher()
    monkeypatch.setattr(work_hub, "get_publisher", lambda: publisher)
    items = [
        WorkItem(
            tenant_id=uuid.UUID(int=1),
            execution_id=uuid.UUID(int=index + 10),
            step_id="s",
            phase="run",
            attempt=1,
            action="event.emit",
            params={},
            remote=False,
        )
        for index in range(3)
    ]
    first = "2026-12-07T08:00:00+00:00"
    work_hub.hand_back_work(
        [Carried(items[0], "00-" + "a" * 32 + "-" + "b" * 16 + "-01", first), Carried(items[1]), Carried(items[2])],
        timeout=3.0,
    )
    [(hub, events, timeout)] = publisher.sent  # one send, bounded as the caller says
    assert hub == "module-work" and timeout == 3.0
    # Under the first one's key: each item's own key led it to this batch's partition, so it leads them all back there.
    assert {event.partition_key for event in events} == {f"{items[0].execution_id}:s:run:1"}
    assert [event.body["execution_id"] for event in events] == [str(item.execution_id) for item in items]
    assert events[0].properties[TRACEPARENT].startswith("00-aaaa") and events[0].properties[FIRST_ENQUEUED] == first
    assert TRACEPARENT not in events[1].properties and FIRST_ENQUEUED not in events[1].properties
