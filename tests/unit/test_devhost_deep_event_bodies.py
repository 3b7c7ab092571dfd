# intent_ref: platform.devhost-eventhubs
"""The devhost's read route shows an event nested too deep to parse as its text, and the group reads on past it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devhost.eventhubs.admin import Deliver, add_read_route, event_out
from devhost.eventhubs.store import StoredEvent
from shared import accepted_json

DEEP = b"[" * 100_000 + b"]" * 100_000
"""Deep enough that json.loads raises RecursionError."""


def _event(sequence_number: int, body: bytes) -> StoredEvent:
    return StoredEvent(0, sequence_number, sequence_number, None, body, {}, datetime.now(UTC))


def test_a_body_nested_deeper_than_the_accepted_json_is_shown_as_its_text() -> None:
    assert event_out(_event(1, DEEP))["body"] == DEEP.decode()
    past = b"[" * (accepted_json.MAX_DEPTH + 1) + b"]" * (accepted_json.MAX_DEPTH + 1)
    assert event_out(_event(2, past))["body"] == past.decode()
    at = b"[" * accepted_json.MAX_DEPTH + b"]" * accepted_json.MAX_DEPTH
    assert isinstance(event_out(_event(3, at))["body"], list)  # JSON within the bound is still its value
    assert event_out(_event(4, b'{"fine": 1}'))["body"] == {"fine": 1}


def test_a_consumer_group_reads_past_a_deeply_nested_event() -> None:
    log = [_event(1, DEEP), _event(2, b'{"fine": 1}')]
    checkpoint = 0

    async def read_group(hub: str, group: str, limit: int, wait: float, deliver: Deliver) -> None:
        # What EventHubHost.read_group does last: deliver the events after the checkpoint, then move it.
        nonlocal checkpoint
        events = [event for event in log if event.sequence_number > checkpoint][:limit]
        await deliver(events)
        checkpoint = events[-1].sequence_number

    async def main() -> tuple[int, list[object]]:
        app = web.Application()
        add_read_route(app, read_group)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            response = await client.get("/devhost/eventhubs/execution-events/consumergroups/mine/events?limit=10")
            return response.status, [event["body"] for event in (await response.json())["events"]]

    status, bodies = asyncio.run(main())
    # Before, every read answered 500 and the checkpoint never moved past the deep event.
    assert status == 200 and bodies == [DEEP.decode(), {"fine": 1}]
    assert checkpoint == 2
