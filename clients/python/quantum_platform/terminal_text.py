# intent_ref: platform.gateway
"""Text from the platform's answers as `qp` prints it: every character a terminal would act on shown as an escape."""

from __future__ import annotations

import json
import re
from typing import Any

# The server's rule for free text a tenant writes, mirrored (the client package ships alone and cannot import the
# platform's own modules): C0 and C1 controls (DEL among them), the line and paragraph separators and the
# bidirectional embeddings, overrides and isolates. An answer still carries text nobody checked against that rule (a
# step's error quotes what an outside endpoint answered; a hostile server answers what it likes), and printed raw it
# rewrites the screen (`\x1b[2J`, the one-byte CSI `\x9b`), sets the window title (`\x1b]0;...`), turns the rest of a
# line around (U+202E) or starts a line of its own (U+2028). The client adds lone surrogates: never stored by the
# server, but sent by a hostile one (`"\ud800"` is valid JSON), they cannot be written in any encoding, and the whole
# answer was refused (`'utf-8' codec can't encode character`).
_UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSHOWN_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""`_UNSHOWN` for text of several lines (a description, an error): line feeds and tabs only move to the next line or
column, and are kept; a carriage return writes the rest of a line over its start and is shown (the server refuses it
in such text too)."""
_UNSHOWN_BY_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What of `_UNSHOWN` the JSON encoder writes as it is: C0 controls it escapes itself, and the only one left raw is a
line feed of the indentation, between values, which must stay as it is."""
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(found: re.Match[str]) -> str:
    character = found.group()
    code = ord(character)
    return _NAMED.get(character) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def shown(value: object, *, lines: bool = True) -> str:
    """`value` as text whose controls, separators, bidirectional characters and lone surrogates are written as
    escapes (`\\x1b`, `\\x9b`, `\\u202e`); `lines`: its line feeds and tabs are kept (else shown as `\\n` and `\\t`,
    for a line that must stay one). A backslash is kept as written: the four characters `\\x1b` in a message read as
    an escaped ESC does, and neither acts."""
    return (_UNSHOWN_IN_LINES if lines else _UNSHOWN).sub(_escape, str(value))


def one_line(value: object) -> str:
    """`shown` on one line: its line feeds, tabs and runs of spaces folded into single spaces, as an error line is."""
    return " ".join(shown(value).split())


def folded(value: object) -> str:
    """`value` as one line of an error's summary: every run of whitespace (line ends among them: a carriage return,
    U+2028) folded into a single space first, then what else a terminal would act on shown as escapes (`shown`). What
    the client says of an answer (its exceptions' text, a retry's reason) passes through this, so that printing it,
    or logging it, hands nothing of the server's to a terminal."""
    return shown(" ".join(str(value).split()), lines=False)


def _json_escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def json_text(data: Any, *, indent: int | None = None) -> str:
    """`data` as JSON, exact for a program (it parses back to the same strings) and inert on a terminal: what the JSON
    encoder leaves as it is (DEL, C1 controls, the separators, bidirectional characters, lone surrogates) is written
    as a `\\uXXXX` escape, which only ever stands inside a string there. Other text beyond ASCII is kept as written, so
    a name in any script still reads as itself."""
    return _UNSHOWN_BY_JSON.sub(_json_escape, json.dumps(data, default=str, ensure_ascii=False, indent=indent))
