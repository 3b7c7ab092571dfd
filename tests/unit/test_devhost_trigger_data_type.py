# intent_ref: platform.devhost-eventhubs
"""An eventHubTrigger's `dataType` as the devhost honours it, like the Functions host: `binary` hands the function the
event's bytes untouched, a string trigger (the default) the body decoded as UTF-8 with replacement."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import pytest

from devhost.eventhubs.binding import EventHubTriggerSpec, trigger_input
from devhost.eventhubs.store import StoredEvent

NOT_UTF8 = b'{"who": "caf\xe9 \xff\xfe"}'


def _spec(**trigger: Any) -> EventHubTriggerSpec:
    """The spec of one Event Hubs function declared with the given trigger settings."""
    app = func.FunctionApp()

    def handler(events: func.EventHubEvent) -> None:
        """Never called."""

    app.event_hub_message_trigger(arg_name="events", event_hub_name="h", connection="C", **trigger)(handler)
    (function,) = app.get_functions()
    return EventHubTriggerSpec.from_function(function)


def _bodies(spec: EventHubTriggerSpec, *bodies: bytes) -> list[bytes]:
    """What the function's `get_body()` returns for each event, through the azure.functions converter."""
    stored = [StoredEvent(0, n, n, None, body, {}, datetime.now(UTC)) for n, body in enumerate(bodies, start=1)]
    inputs, metadata = trigger_input(spec, 0, stored)
    decoded = func.eventhub.EventHubTriggerConverter.decode(inputs[spec.parameter], trigger_metadata=metadata)
    events = decoded if isinstance(decoded, list) else [decoded]
    return [event.get_body() for event in events]


@pytest.mark.parametrize("data_type", [func.DataType.BINARY, "binary"])
@pytest.mark.parametrize("cardinality", ["many", "one"])
def test_a_binary_trigger_hands_the_function_the_bytes_as_sent(data_type: Any, cardinality: str) -> None:
    spec = _spec(data_type=data_type, cardinality=cardinality)
    assert spec.binary
    assert _bodies(spec, NOT_UTF8) == [NOT_UTF8]


@pytest.mark.parametrize("cardinality", ["many", "one"])
def test_a_string_trigger_gets_the_body_decoded_with_replacement(cardinality: str) -> None:
    spec = _spec(cardinality=cardinality)
    assert not spec.binary
    assert _bodies(spec, NOT_UTF8) == ['{"who": "caf\ufffd \ufffd\ufffd"}'.encode()]
