# intent_ref: platform.devhost-eventhubs
"""A local-only admin route to publish events: `POST /devhost/eventhubs/{hub}/events` (curl, tests)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from aiohttp import web

from devhost.eventhubs.store import NewEvent, Receipt

Publish = Callable[[str, Sequence[NewEvent]], Awaitable[list[Receipt]]]

ROUTE = "/devhost/eventhubs/{hub}/events"


class _BadRequest(ValueError):
    pass


def add_publish_route(app: web.Application, publish: Publish) -> None:
    """Register the route; `publish` appends events and returns where they landed."""

    async def handle(request: web.Request) -> web.Response:
        if not _is_loopback(request.remote):
            return _error(403, "the devhost admin API answers local callers only")
        try:
            events = parse_events(await request.read())
            receipts = await publish(request.match_info["hub"], events)
        except _BadRequest as exc:
            return _error(400, str(exc))
        except psycopg.errors.CheckViolation:
            return _error(400, "invalid hub name, or an event body larger than 1 MiB")
        landed = [{"partition_id": str(r.partition_id), "sequence_number": r.sequence_number}
                  for r in receipts]
        return web.json_response({"events": landed})

    app.router.add_post(ROUTE, handle)


def parse_events(raw: bytes) -> list[NewEvent]:
    """Parse `{"events": [{"body": <JSON> | "body_base64": "..", "partition_key": "..", "properties": {}}]}`.

    A string body is sent as its UTF-8 text, any other JSON value as its JSON text.
    """
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"the body is not JSON: {exc}") from None
    items = document.get("events") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise _BadRequest('expected {"events": [...]} with at least one event')
    return [_parse_event(index, item) for index, item in enumerate(items)]


def _parse_event(index: int, item: Any) -> NewEvent:
    if not isinstance(item, dict):
        raise _BadRequest(f"events[{index}] must be an object")
    partition_key = item.get("partition_key")
    properties = item.get("properties", {})
    if partition_key is not None and not isinstance(partition_key, str):
        raise _BadRequest(f"events[{index}].partition_key must be a string")
    if not isinstance(properties, dict):
        raise _BadRequest(f"events[{index}].properties must be an object")
    if "body_base64" in item:
        try:
            body = base64.b64decode(str(item["body_base64"]), validate=True)
        except binascii.Error:
            raise _BadRequest(f"events[{index}].body_base64 is not base64") from None
    elif "body" in item:
        value = item["body"]
        body = value.encode() if isinstance(value, str) else json.dumps(value, separators=(",", ":")).encode()
    else:
        raise _BadRequest(f"events[{index}] needs a body or body_base64")
    return NewEvent(body=body, partition_key=partition_key, properties=properties)


def _is_loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:  # a unix socket path: local by construction
        return True


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"error": detail}, status=status)
