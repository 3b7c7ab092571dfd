# intent_ref: platform.database
"""How JSON stored in Postgres reads back: as the same JSON the platform accepts from its callers."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from psycopg.types.json import set_json_loads

from shared.accepted_json import MAX_INT, MIN_INT


def _number(text: str) -> int | float | Decimal:
    # jsonb keeps numbers as numerics without an exponent, so a float such as 1e19 reads back as a 20-digit
    # integer, which the edge refuses as an integer literal (beyond a bigint). Read it back as the float it was.
    # Beyond a float's range it cannot have been one: it is kept as the integer it is (float() raised OverflowError
    # and every page holding it failed to read), and past the digits Python reads as an int, as the exact decimal.
    try:
        value = int(text)
    except ValueError:
        return Decimal(text)
    if MIN_INT <= value <= MAX_INT:
        return value
    try:
        return float(value)
    except OverflowError:
        return value


def loads(data: str | bytes) -> Any:
    """Parse a json/jsonb value read from the database."""
    return json.loads(data, parse_int=_number)


def install() -> None:
    """Make every psycopg connection of this process read json/jsonb with `loads`."""
    set_json_loads(loads)
