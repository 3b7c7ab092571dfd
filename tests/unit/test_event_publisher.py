# intent_ref: platform.events
"""The publisher port without I/O: body encoding and the Azure backend's batching by partition key."""

from __future__ import annotations

from typing import Any

import pytest
from azure.eventhub import EventDataBatch

from shared.events.publisher import OutboundEvent, _batches, _by_partition_key


class _Producer:
    """Stands in for EventHubProducerClient.create_batch with real, deliberately small batches."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size

    def create_batch(self, *, partition_key: str | None = None) -> EventDataBatch:
        return EventDataBatch(max_size_in_bytes=self.max_size, partition_key=partition_key)


def test_bodies_are_bytes_utf8_text_or_compact_json() -> None:
    assert OutboundEvent(b"\x00\x01").body_bytes() == b"\x00\x01"
    assert OutboundEvent("héllo").body_bytes() == "héllo".encode()
    assert OutboundEvent({"a": [1, "é"]}).body_bytes() == '{"a":[1,"é"]}'.encode()


def test_events_are_grouped_by_partition_key_keeping_their_order() -> None:
    events = [OutboundEvent(str(n), partition_key=key) for n, key in enumerate(["a", "b", "a", None, "b"])]
    groups = _by_partition_key(events)
    assert {key: [e.body for e in group] for key, group in groups.items()} == {
        "a": ["0", "2"],
        "b": ["1", "4"],
        None: ["3"],
    }


def test_a_group_larger_than_a_batch_is_split_and_keeps_key_and_properties() -> None:
    events = [OutboundEvent(b"x" * 50, partition_key="k", properties={"n": n}) for n in range(5)]
    batches: list[Any] = list(_batches(_Producer(300), "k", events))  # type: ignore[arg-type]
    assert [len(b) for b in batches] == [2, 2, 1]
    # EventDataBatch exposes no accessors; its private fields are the only way to look inside.
    assert all(b._partition_key == "k" for b in batches)
    sent = [e for b in batches for e in b._internal_events]
    assert [e.properties["n"] for e in sent] == [0, 1, 2, 3, 4]


def test_an_event_larger_than_any_batch_fails_loudly() -> None:
    with pytest.raises(ValueError):
        list(_batches(_Producer(100), None, [OutboundEvent(b"x" * 500)]))  # type: ignore[arg-type]
