# intent_ref: platform.telemetry
"""What a received `module-work` batch carries for telemetry: each event's trace context, and how long it waited."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from shared.events.trigger import TriggerEvent, batch_properties
from shared.observability import metrics
from shared.observability.tracing import TRACEPARENT


def received_work(events: Sequence[TriggerEvent]) -> tuple[list[bytes], list[str | None]]:
    """The bodies of a `module-work` batch and each one's trace context (its `traceparent` property, set by the
    publisher as the Azure SDKs set it); records how long each waited on the hub."""
    now = datetime.now(UTC)
    traceparents: list[str | None] = []
    for event, props in zip(events, batch_properties(events), strict=True):
        traceparent = props.get(TRACEPARENT)
        traceparents.append(traceparent if isinstance(traceparent, str) else None)
        if event.enqueued_time is not None:
            enqueued = event.enqueued_time
            enqueued = enqueued if enqueued.tzinfo is not None else enqueued.replace(tzinfo=UTC)
            metrics.module_work_lag(str(props.get("action", "")), (now - enqueued).total_seconds())
    return [event.get_body() for event in events], traceparents
