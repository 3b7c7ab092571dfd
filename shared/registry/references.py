# intent_ref: platform.registry
"""`${inputs.x}` and `${steps.<id>.output.<path>}` references: found at save time, resolved at run time."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

JsonPath = tuple[str | int, ...]
"""Where a value sits inside a JSON document: object keys and array indexes."""

STEP_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_SEGMENT = r"[A-Za-z0-9_-]+"
_BODY = re.compile(
    rf"(?:inputs\.(?P<input>[A-Za-z_][A-Za-z0-9_-]*)|steps\.(?P<step>{STEP_ID_PATTERN})\.output)"
    rf"(?P<path>(?:\.{_SEGMENT})*)"
)
# `$${` is the escape for a literal `${`; it is matched first so that it wins over a reference.
_TOKEN = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\}?)")
# Only these namespaces are references: other `${...}` text (a shell variable in a script) stays literal.
_NAMESPACE = re.compile(r"\s*(?:inputs|steps)\b")


class ReferenceSyntaxError(ValueError):
    """A `${inputs...}` or `${steps...}` that does not follow the reference grammar."""


class UnresolvedReferenceError(LookupError):
    """A reference whose input, step output or path is absent at run time."""

    def __init__(self, reference: Reference, reason: str) -> None:
        super().__init__(f"{reference}: {reason}")
        self.reference = reference


class ResolvedTooLargeError(ValueError):
    """Resolving made parameters larger than the bound given: references repeated in one value multiply."""


MAX_RESOLVED_CHARS = 2 * 1024 * 1024
"""What one step's parameters may come to once resolved: twice the largest body a request may carry, so a whole
output (a remote result is at most that body) passes, and a template repeating references cannot grow without end."""


@dataclass(frozen=True)
class Reference:
    """One parsed reference: an execution input or an upstream step's output, and a path inside it."""

    source: Literal["inputs", "steps"]
    name: str
    path: tuple[str, ...] = ()

    def __str__(self) -> str:
        head = f"inputs.{self.name}" if self.source == "inputs" else f"steps.{self.name}.output"
        return "${" + ".".join((head, *self.path)) + "}"


@dataclass
class ReferenceScan:
    """Every reference found in a value, and every malformed one, each with its path inside the value."""

    found: list[tuple[JsonPath, Reference]] = field(default_factory=list)
    errors: list[tuple[JsonPath, str]] = field(default_factory=list)


def parse_reference(text: str) -> Reference:
    """The reference that `text` is exactly (`${...}` and nothing else)."""
    parts = parse_template(text)
    if len(parts) != 1 or not isinstance(parts[0], Reference):
        raise ReferenceSyntaxError(
            f"{text!r} is not a reference: expected ${{inputs.<name>[.<path>]}} or ${{steps.<id>.output[.<path>]}}"
        )
    return parts[0]


def parse_template(text: str) -> list[str | Reference]:
    """A string split into literal text and references, in order; `$${` stands for a literal `${`."""
    parts: list[str | Reference] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        body = match.group("body")
        if body is None:
            literal.append("${")
        elif not _NAMESPACE.match(body):
            literal.append(match.group(0))
        else:
            if not match.group("close"):
                raise ReferenceSyntaxError(f"unterminated reference '${{{body}' (missing '}}')")
            if literal and "".join(literal):
                parts.append("".join(literal))
            literal = []
            parts.append(_parse_body(body))
    literal.append(text[position:])
    if "".join(literal):
        parts.append("".join(literal))
    return parts


def _parse_body(body: str) -> Reference:
    match = _BODY.fullmatch(body)
    if match is None:
        raise ReferenceSyntaxError(
            f"malformed reference '${{{body}}}': expected ${{inputs.<name>[.<path>]}} "
            "or ${steps.<id>.output[.<path>]}"
        )
    path = tuple(match.group("path").split(".")[1:])
    if match.group("input") is not None:
        return Reference("inputs", match.group("input"), path)
    return Reference("steps", match.group("step"), path)


def _walk_strings(value: Any, path: JsonPath = ()) -> Iterator[tuple[JsonPath, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk_strings(item, (*path, index))


def scan_references(value: Any) -> ReferenceScan:
    """The references in every string inside `value` (nested objects and arrays too); keys are never templates."""
    scan = ReferenceScan()
    for path, text in _walk_strings(value):
        try:
            scan.found.extend((path, part) for part in parse_template(text) if isinstance(part, Reference))
        except ReferenceSyntaxError as exc:
            scan.errors.append((path, str(exc)))
    return scan


def contains_reference(text: str) -> bool:
    """Whether a string holds a reference (or a malformed one), so its final value is only known at run time."""
    try:
        return any(isinstance(part, Reference) for part in parse_template(text))
    except ReferenceSyntaxError:
        return True


def lookup(reference: Reference, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    """The value a reference points at; `outputs` maps step ids to their outputs."""
    root = inputs if reference.source == "inputs" else outputs
    if reference.name not in root:
        what = "input" if reference.source == "inputs" else "output of step"
        raise UnresolvedReferenceError(reference, f"no {what} '{reference.name}'")
    value = root[reference.name]
    for segment in reference.path:
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            raise UnresolvedReferenceError(reference, f"no '{segment}' in the referenced value")
    return value


def _stringify(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def resolve(value: Any, inputs: Mapping[str, Any], outputs: Mapping[str, Any], *, max_chars: int | None = None) -> Any:
    """`value` with every reference replaced: a string that is one reference takes the referenced JSON value
    (a number stays a number); references embedded in text are stringified (JSON for non-strings).

    With `max_chars`, ResolvedTooLargeError as soon as the referenced values and the text around them come to more
    (counted as JSON text): a 90 KB definition repeating one reference became 240 million characters."""
    return _resolve(value, inputs, outputs, _Budget(max_chars))


class _Budget:
    """The characters a resolution may still produce; unbounded without a limit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, size: int) -> None:
        if self.left is None:
            return
        self.left -= size
        if self.left < 0:
            raise ResolvedTooLargeError(f"the parameters come to more than {self.limit} characters once resolved")


def json_length(value: Any) -> int:
    """Characters `value` takes as JSON: a string of quotes or control characters takes up to six times its length."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _resolve(value: Any, inputs: Mapping[str, Any], outputs: Mapping[str, Any], budget: _Budget) -> Any:
    if isinstance(value, str):
        parts = parse_template(value)
        if len(parts) == 1 and isinstance(parts[0], Reference):
            found = lookup(parts[0], inputs, outputs)
            if budget.left is not None:
                budget.spend(json_length(found))
            # A deep copy, so that a resolved parameter never aliases another step's output.
            return copy.deepcopy(found)
        pieces: list[str] = []
        for part in parts:
            piece = _stringify(lookup(part, inputs, outputs)) if isinstance(part, Reference) else part
            if budget.left is not None:
                budget.spend(json_length(piece) - 2)  # its place in the string, escaped, without its quotes
            pieces.append(piece)
        return "".join(pieces)
    if isinstance(value, dict):
        return {key: _resolve(item, inputs, outputs, budget) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, inputs, outputs, budget) for item in value]
    return value
