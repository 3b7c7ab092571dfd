# intent_ref: platform.events
"""What an Event Hubs trigger's batch carries beside the bodies: each event's application properties."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol


class TriggerEvent(Protocol):
    """The part of `azure.functions.EventHubEvent` the platform reads."""

    def get_body(self) -> bytes: ...

    @property
    def sequence_number(self) -> int | None: ...

    @property
    def enqueued_time(self) -> datetime | None: ...

    @property
    def metadata(self) -> Mapping[str, Any] | None: ...


def batch_properties(events: Sequence[TriggerEvent]) -> list[Mapping[str, Any]]:
    """Each event's application properties, in order (the host sends them once per batch, as `PropertiesArray`);
    an empty mapping for an event that has none or when the host sent none."""
    metadata = (events[0].metadata or {}) if events else {}
    raw = metadata.get("PropertiesArray")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    raw = raw if isinstance(raw, list) else []
    return [raw[i] if i < len(raw) and isinstance(raw[i], Mapping) else {} for i in range(len(events))]
