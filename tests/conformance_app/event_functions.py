# intent_ref: platform.devhost-eventhubs
"""Conformance functions for the devhost's Event Hubs and timer triggers; each records what it received."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func

bp = func.Blueprint()

BATCH_HUB = "conformance-batch"
SINGLE_HUB = "conformance-single"
TEXT_HUB = "conformance-text"
RETRIED_HUB = "conformance-retried"
TEXT_CONSUMER_GROUP = "conformance"

_lock = threading.Lock()


def _record(function: str, entry: dict[str, Any]) -> None:
    """Append one JSON line to $CONFORMANCE_STATE_DIR/<function>.jsonl (no-op when it is unset)."""
    directory = os.environ.get("CONFORMANCE_STATE_DIR")
    if not directory:
        return
    line = json.dumps({"function": function, **entry}, default=str)
    with _lock, open(Path(directory) / f"{function}.jsonl", "a", encoding="utf-8") as file:
        file.write(line + "\n")


def _event(event: func.EventHubEvent) -> dict[str, Any]:
    return {
        "body": event.get_body().decode("utf-8"),
        "sequence_number": event.sequence_number,
        "offset": event.offset,
        "partition_key": event.partition_key,
        "enqueued_time": event.enqueued_time.isoformat() if event.enqueued_time else None,
    }


@bp.event_hub_message_trigger(
    arg_name="events", event_hub_name=BATCH_HUB, connection="EventHubConnection", cardinality="many"
)
def on_conformance_batch(events: list[func.EventHubEvent]) -> None:
    """Cardinality many: records the batch with each event's metadata."""
    metadata = dict(events[0].metadata or {})
    _record(
        "on_conformance_batch",
        {
            "events": [_event(e) for e in events],
            "partition_context": metadata.get("PartitionContext"),
            "properties": metadata.get("PropertiesArray"),
            "metadata_keys": sorted(metadata),
        },
    )


@bp.event_hub_message_trigger(arg_name="event", event_hub_name=SINGLE_HUB, connection="EventHubConnection")
def on_conformance_single(event: func.EventHubEvent) -> None:
    """Cardinality one (omitted): records the event, then raises when the body asks it to."""
    metadata = dict(event.metadata or {})
    _record(
        "on_conformance_single",
        {
            **_event(event),
            "partition_context": metadata.get("PartitionContext"),
            "properties": metadata.get("Properties"),
            "system_properties": metadata.get("SystemProperties"),
            "metadata_keys": sorted(metadata),
        },
    )
    if json.loads(event.get_body()).get("fail"):
        raise RuntimeError("asked to fail")


@bp.event_hub_message_trigger(
    arg_name="event",
    event_hub_name=TEXT_HUB,
    connection="EventHubConnection",
    cardinality="one",
    consumer_group=TEXT_CONSUMER_GROUP,
)
def on_conformance_text(event: str) -> None:
    """A str annotation: the worker passes the raw body, not an EventHubEvent."""
    _record("on_conformance_text", {"body": event, "type": type(event).__name__})


@bp.retry(strategy="fixed_delay", max_retry_count="2", delay_interval="00:00:01")
@bp.event_hub_message_trigger(arg_name="event", event_hub_name=RETRIED_HUB, connection="EventHubConnection")
def on_conformance_retried(event: func.EventHubEvent, context: func.Context) -> None:
    """With a retry policy: records each run and which retry it is, and raises while the body's `fail_runs` is
    more than the runs so far."""
    retry = context.retry_context
    body = json.loads(event.get_body())
    _record(
        "on_conformance_retried",
        {"body": body, "retry_count": retry.retry_count, "max_retry_count": retry.max_retry_count},
    )
    if retry.retry_count < int(body.get("fail_runs", 0)):
        raise RuntimeError(f"asked to fail run {retry.retry_count}")


@bp.timer_trigger(arg_name="timer", schedule="* * * * * *", use_monitor=True)
def on_conformance_timer(timer: func.TimerRequest) -> None:
    """Every second, monitored, so a restart after a gap runs once past due."""
    _record(
        "on_conformance_timer",
        {
            "past_due": timer.past_due,
            "schedule_status": timer.schedule_status,
            "schedule": timer.schedule,
            "at": datetime.now(UTC).isoformat(),
        },
    )
