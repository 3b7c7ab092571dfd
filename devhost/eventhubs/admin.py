# intent_ref: platform.devhost-eventhubs
"""Local-only admin routes (the host asks for its key, ADR 0020): publish events, read them as a consumer group."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from aiohttp import web

from devhost.eventhubs.store import NewEvent, Receipt, StoredEvent
from shared import accepted_json

Publish = Callable[[str, Sequence[NewEvent]], Awaitable[list[Receipt]]]
Deliver = Callable[[list[StoredEvent]], Awaitable[None]]
ReadGroup = Callable[[str, str, int, float, Deliver], Awaitable[None]]
"""`(hub, group, limit, wait, deliver)`: hand the next events to `deliver`, then checkpoint them."""

ROUTE = "/devhost/eventhubs/{hub}/events"
READ_ROUTE = "/devhost/eventhubs/{hub}/consumergroups/{group}/events"
PLATFORM_ONLY_HUBS = frozenset({"module-work"})
"""Hubs the read route refuses (ADR 0027): only the platform's in-process consumers read them."""
DEFAULT_READ_LIMIT, MAX_READ_LIMIT = 10, 100
MAX_READ_WAIT_S = 30.0
_GROUP_NAME = re.compile(r"[A-Za-z0-9$][A-Za-z0-9._$-]{0,255}")


class _BadRequest(ValueError):
    pass


class NoSuchHubError(LookupError):
    """The hub does not exist (nothing created or published it yet)."""


class GroupInUseError(ValueError):
    """The consumer group belongs to the app's own trigger functions."""


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
        landed = [{"partition_id": str(r.partition_id), "sequence_number": r.sequence_number} for r in receipts]
        return web.json_response({"events": landed})

    app.router.add_post(ROUTE, handle)


def add_read_route(app: web.Application, read_group: ReadGroup) -> None:
    """Register `GET {READ_ROUTE}?limit=N&wait=S`: the group's next events, across partitions.

    The group's checkpoints advance once the response is written, so each event goes to one reader of the group.
    A response that cannot be written is not checkpointed (read again); a reader that stops mid-batch does not
    get that batch again. `wait` holds an empty answer until an event arrives (a long poll).
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        if not _is_loopback(request.remote):
            return _error(403, "the devhost admin API answers local callers only")
        hub, group = request.match_info["hub"], request.match_info["group"]
        if hub in PLATFORM_ONLY_HUBS:
            return _error(
                403,
                f"{hub} carries only the platform's own work, read by its own worker; a tenant's worker leases its "
                "work at POST /api/v1/work/lease",
            )
        try:
            if not _GROUP_NAME.fullmatch(group):
                raise _BadRequest(f"invalid consumer group name {group!r}")
            limit = int(_number(request, "limit", DEFAULT_READ_LIMIT, 1, MAX_READ_LIMIT, integer=True))
            wait = _number(request, "wait", 0.0, 0.0, MAX_READ_WAIT_S)
        except _BadRequest as exc:
            return _error(400, str(exc))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})

        async def deliver(events: list[StoredEvent]) -> None:
            body = json.dumps({"events": [event_out(e) for e in events]}).encode()
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()

        try:
            await read_group(hub, group, limit, wait, deliver)
        except NoSuchHubError:
            return _error(404, f"no event hub {hub!r}")
        except GroupInUseError as exc:
            return _error(409, str(exc))
        except ConnectionResetError:  # the reader left (a long poll given up): nothing was checkpointed
            pass  # aiohttp finds the connection closed too and only logs the access
        return response

    app.router.add_get(READ_ROUTE, handle)


def event_out(event: StoredEvent) -> dict[str, Any]:
    """An event as the read route shows it: `body` is its JSON value (at most accepted_json.MAX_DEPTH deep), else
    its text, else `body_base64`."""
    out: dict[str, Any] = {
        "partition_id": str(event.partition_id),
        "sequence_number": event.sequence_number,
        "offset": event.offset,
        "partition_key": event.partition_key,
        "enqueued_time": event.enqueued_time.isoformat(),
        "properties": event.properties,
    }
    try:
        text = event.body.decode()
    except UnicodeDecodeError:
        out["body_base64"] = base64.b64encode(event.body).decode()
        return out
    # Deeper than the accepted JSON's bound, the text: a thousand levels made json.loads raise RecursionError, which
    # answered 500 on every read and never moved the group's checkpoint past the event.
    if accepted_json.nesting_depth(text) > accepted_json.MAX_DEPTH:
        out["body"] = text
        return out
    try:
        out["body"] = json.loads(text)
    except ValueError:
        out["body"] = text
    return out


def _number(
    request: web.Request, name: str, default: float, low: float, high: float, *, integer: bool = False
) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be a number") from None
    if not low <= value <= high:
        raise _BadRequest(f"{name} must be between {low:g} and {high:g}")
    return value


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
