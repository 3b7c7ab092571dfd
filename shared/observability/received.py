# intent_ref: platform.telemetry
"""What a received `module-work` batch carries for telemetry: each event's trace context, and how long it waited."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.engine.work_hub import FIRST_ENQUEUED
from shared.events.trigger import TriggerEvent, batch_properties
from shared.observability import metrics
from shared.observability.tracing import TRACEPARENT


@dataclass(frozen=True)
class ReceivedWork:
    """A `module-work` batch's bodies and, by position, each one's trace context (its `traceparent` property, set by
    the publisher as the Azure SDKs set it) and when it first went on the hub (ISO 8601; a handed-back item's
    `qp-first-enqueued` property, ADR 0048, else its event's enqueued time)."""

    bodies: list[bytes]
    traceparents: list[str | None]
    first_enqueued: list[str | None]


def received_work(events: Sequence[TriggerEvent]) -> ReceivedWork:
    """What a `module-work` batch carries; records how long each event waited on the hub since it first went on it."""
    now = datetime.now(UTC)
    traceparents: list[str | None] = []
    first_enqueued: list[str | None] = []
    for event, props in zip(events, batch_properties(events), strict=True):
        traceparent = props.get(TRACEPARENT)
        traceparents.append(traceparent if isinstance(traceparent, str) else None)
        first = _first_enqueued(props.get(FIRST_ENQUEUED), event.enqueued_time)
        first_enqueued.append(None if first is None else first.isoformat())
        if first is not None:
            metrics.module_work_lag(str(props.get("action", "")), (now - first).total_seconds())
    return ReceivedWork([event.get_body() for event in events], traceparents, first_enqueued)


def _first_enqueued(carried: object, enqueued: datetime | None) -> datetime | None:
    """The carried time when it is one (a property is anyone's to set: any other value is passed by), else the
    event's own."""
    if isinstance(carried, str):
        try:
            first = datetime.fromisoformat(carried)
        except ValueError:
            first = None
        if first is not None:
            return first if first.tzinfo is not None else first.replace(tzinfo=UTC)
    if enqueued is None:
        return None
    return enqueued if enqueued.tzinfo is not None else enqueued.replace(tzinfo=UTC)
