# intent_ref: platform.gateway
"""Opaque cursors for keyset pagination: `?limit=&cursor=` in, `{"items", "next_cursor"}` out."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from shared import accepted_json

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class InvalidCursorError(ValueError):
    """A cursor this API did not issue (the gateway answers 400)."""


def encode_cursor(position: dict[str, Any]) -> str:
    """An opaque, URL-safe cursor for the position after the last item returned."""
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True, default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    """The position a cursor stands for; a malformed one raises InvalidCursorError."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        # A cursor comes back from the caller: parsed as any body is (bounded nesting, no NUL), not trusted.
        value = accepted_json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error):
        value = None
    if not isinstance(value, dict):
        raise InvalidCursorError("the cursor is not one this API issued")
    return value


def cursor_text(position: Mapping[str, Any] | None, name: str) -> str | None:
    """The text a cursor's position holds at `name` (None without a cursor or the field); InvalidCursorError when
    the field holds anything else, which no cursor this API issued does."""
    value = None if position is None else position.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidCursorError("the cursor is not one this API issued")
    return value


LIST_MARKER = "list"
"""The member of a position naming the list that issued it (`list_cursor`), so that no list takes another's cursor."""


def list_cursor(list_name: str, position: dict[str, Any]) -> str:
    """A cursor of the list `list_name` (e.g. `intents`) for `position`; `list_position` reads it back."""
    return encode_cursor({**position, LIST_MARKER: list_name})


def list_position(cursor: str | None, list_name: str, field: str) -> Any:
    """The value at `field` of a cursor `list_cursor(list_name, ...)` issued (None without a cursor, the first page).

    InvalidCursorError for a cursor of another list, or one without `field` (read as no position, such a cursor
    silently restarted the list at its first page). A cursor without the marker (issued before lists marked theirs)
    is taken while it holds `field`, so a client paging across the change carries on; what the value must be is the
    caller's check."""
    position = decode_cursor(cursor)
    if position is None:
        return None
    marker = position.get(LIST_MARKER, list_name)
    if marker != list_name or position.get(field) is None:
        raise InvalidCursorError("the cursor is not one this list issued")
    return position[field]


def marked_list_position(cursor: str | None, list_name: str, field: str) -> Any:
    """As `list_position`, for a list that marked its cursors from its first page on: a cursor without the marker
    is refused too (InvalidCursorError), since this list never issued one."""
    position = decode_cursor(cursor)
    if position is not None and position.get(LIST_MARKER) != list_name:
        raise InvalidCursorError("the cursor is not one this list issued")
    return list_position(cursor, list_name, field)
