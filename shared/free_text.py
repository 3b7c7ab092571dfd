# intent_ref: platform.hardening
"""Free text a tenant writes for people to read (names, descriptions, messages): shown as written, never acting."""

from __future__ import annotations

import re

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

# C0 and C1 controls (DEL among them) and the bidirectional embeddings, overrides and isolates: text holding them
# rewrites what a terminal or a log viewer shows around it (`\x1b[2J`, or U+202E turning the rest of a line around).
UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
SHOWN_AS_WRITTEN = (
    "no control characters (U+0000-U+001F, U+007F-U+009F) and no bidirectional overrides or isolates "
    "(U+202A-U+202E, U+2066-U+2069)"
)
"""The rule as an OpenAPI description says it."""
UNSHOWN_CHARACTER = "unshown_character"


def unshown_problem(value: str) -> str | None:
    """Why `value` is not shown as written (its first control or bidirectional character, by code point and offset:
    never the character itself, which would act again where the answer is shown), or None."""
    found = UNSHOWN.search(value)
    if found is None:
        return None
    return (
        "control characters and bidirectional overrides or isolates are not accepted "
        f"(U+{ord(found.group()):04X} at offset {found.start()})"
    )


def shown_as_written(value: str) -> str:
    """`value` when `unshown_problem` finds nothing in it, else a pydantic validation error saying what it found."""
    problem = unshown_problem(value)
    if problem is not None:
        raise PydanticCustomError(UNSHOWN_CHARACTER, problem)
    return value


SHOWN = AfterValidator(shown_as_written)
"""The check as pydantic metadata, after a field's length bound: `Annotated[str, Field(max_length=...,
description=f"...: {SHOWN_AS_WRITTEN}"), SHOWN]` (placed before the bound, the check would read text of any length
and the bound's error would change)."""
