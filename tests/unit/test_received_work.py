# intent_ref: platform.telemetry
"""A `module-work` batch's wait on the hub counts from when each item first went on it: a handed-back item carries
that time (ADR 0048), and its lag does not start again at every hand-back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.engine.work_hub import FIRST_ENQUEUED
from shared.observability import metrics, received
from shared.observability.tracing import TRACEPARENT

NOW = datetime.now(UTC)


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
    first = NOW - timedelta(minutes=10)
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
    just_now = NOW - timedelta(seconds=1)
    batch = received.received_work(
        [_Event(b"a", metadata, just_now), _Event(b"b", metadata, just_now), _Event(b"c", metadata, None)]
    )
    assert batch.bodies == [b"a", b"b", b"c"]
    assert batch.traceparents == [properties[0][TRACEPARENT], None, None]
    assert batch.first_enqueued == [first.isoformat(), just_now.isoformat(), None]
    # Ten minutes for the handed-back one, not the second since its last hand-back; a value that is no time is
    # passed by, and an event without its own time is not measured.
    assert len(lags) == 2 and 599 < lags[0] < 700 and 0.9 < lags[1] < 60
