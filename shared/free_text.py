# intent_ref: platform.hardening
"""Free text a tenant writes for people to read (names, descriptions, messages): shown as written, never acting."""

from __future__ import annotations

import re

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

# C0 and C1 controls (DEL among them), the line and paragraph separators and the bidirectional embeddings, overrides
# and isolates: text holding them rewrites what a terminal or a log viewer shows around it (`\x1b[2J`, U+202E turning
# the rest of a line around, U+2028 starting a line a log reader takes for a record of its own).
UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SHOWN_AS_WRITTEN = (
    "no control characters (U+0000-U+001F, U+007F-U+009F), no line or paragraph separators (U+2028, U+2029) and "
    "no bidirectional overrides or isolates (U+202A-U+202E, U+2066-U+2069)"
)
"""The rule as an OpenAPI description says it."""
# Text of several lines (a description, an approval's message) keeps its line feeds and tabs, which only move to the
# next line or column; a carriage return is still refused (it writes the rest of a line over its start).
UNSHOWN_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SHOWN_AS_WRITTEN_IN_LINES = (
    "no control characters but line feeds and tabs (U+0000-U+0008, U+000B-U+001F, U+007F-U+009F), no line or "
    "paragraph separators (U+2028, U+2029) and no bidirectional overrides or isolates (U+202A-U+202E, U+2066-U+2069)"
)
"""The rule for text of several lines, as an OpenAPI description says it."""
# Source text (a tenant's Cedar policy) keeps its line feeds and tabs and also the carriage return of a CRLF line end,
# as an editor writes them; a carriage return anywhere else is refused, as in UNSHOWN_IN_LINES.
UNSHOWN_IN_SOURCE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
    "|\r(?!\n)"
)
SHOWN_AS_WRITTEN_IN_SOURCE = (
    "no control characters but line feeds, tabs and the carriage return of a CRLF line end (U+0000-U+0008, "
    "U+000B-U+001F, U+007F-U+009F), no line or paragraph separators (U+2028, U+2029) and no bidirectional overrides "
    "or isolates (U+202A-U+202E, U+2066-U+2069), and no invisible marks or zero-width characters (U+061C, "
    "U+200B-U+200F, U+2060-U+2064, U+FEFF), in comments and strings too"
)
"""The rule for source text of several lines, as an OpenAPI description says it."""
UNSHOWN_CHARACTER = "unshown_character"


def unshown_problem(value: str, *, lines: bool = False) -> str | None:
    """Why `value` is not shown as written (its first control or bidirectional character, by code point and offset:
    never the character itself, which would act again where the answer is shown), or None; `lines`: text of several
    lines, whose line feeds and tabs are shown as written."""
    return _first_unshown(UNSHOWN_IN_LINES if lines else UNSHOWN, value)


def _first_unshown(pattern: re.Pattern[str], value: str) -> str | None:
    found = pattern.search(value)
    if found is None:
        return None
    return (
        "control characters and bidirectional overrides or isolates are not accepted "
        f"(U+{ord(found.group()):04X} at offset {found.start()})"
    )


def shown_as_written(value: str) -> str:
    """`value` when `unshown_problem` finds nothing in it, else a pydantic validation error saying what it found."""
    return _refused_unless_shown(value, lines=False)


def shown_as_written_in_lines(value: str) -> str:
    """`shown_as_written` for text of several lines."""
    return _refused_unless_shown(value, lines=True)


def shown_as_written_in_source(value: str) -> str:
    """`shown_as_written` for source text of several lines (see UNSHOWN_IN_SOURCE)."""
    problem = _first_unshown(UNSHOWN_IN_SOURCE, value)
    if problem is not None:
        raise PydanticCustomError(UNSHOWN_CHARACTER, problem)
    return value


def _refused_unless_shown(value: str, *, lines: bool) -> str:
    problem = unshown_problem(value, lines=lines)
    if problem is not None:
        raise PydanticCustomError(UNSHOWN_CHARACTER, problem)
    return value


SHOWN = AfterValidator(shown_as_written)
"""The check as pydantic metadata, after a field's length bound: `Annotated[str, Field(max_length=...,
description=f"...: {SHOWN_AS_WRITTEN}"), SHOWN]` (placed before the bound, the check would read text of any length
and the bound's error would change)."""

SHOWN_IN_LINES = AfterValidator(shown_as_written_in_lines)
"""`SHOWN` for text of several lines (a description): its line feeds and tabs are kept."""

SHOWN_IN_SOURCE = AfterValidator(shown_as_written_in_source)
"""`SHOWN` for source text (a tenant's policy): its line feeds, tabs and CRLF line ends are kept. A comment or a
string of it is refused alike: the text is shown back as written, and U+202E in a comment can make a reader see a
condition the engine never reads (or miss one it does)."""

REPLACEMENT = "\ufffd"
"""What `neutralised` shows in place of a character that would act where the text is shown."""


def neutralised(value: str, *, lines: bool = False) -> str:
    """`value` with each character `unshown_problem` would find replaced by U+FFFD (one for one: its length bound
    still holds); `lines`: line feeds and tabs are kept, and a carriage return ending a line goes. For text whose
    refusal would cost more than the text is worth (a worker's progress, for which a refused heartbeat would lose
    its lease) and for text resolved after the rule was applied (a stored version's)."""
    if lines:
        value = value.replace("\r\n", "\n")
    return (UNSHOWN_IN_LINES if lines else UNSHOWN).sub(REPLACEMENT, value)


def neutralised_in_lines(value: str) -> str:
    """`neutralised` for text of several lines, as a pydantic after-validator."""
    return neutralised(value, lines=True)


NEUTRALISED_IN_LINES = AfterValidator(neutralised_in_lines)
"""`SHOWN_IN_LINES`, but the text is accepted with its acting characters replaced (`neutralised`)."""
