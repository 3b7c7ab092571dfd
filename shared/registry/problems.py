# intent_ref: platform.registry
"""Validation problems located by RFC 6901 JSON pointers, from pydantic and JSON Schema errors alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic
from jsonschema import Draft202012Validator
from jsonschema import ValidationError as SchemaViolation

from shared.accepted_json import path_pointer, unescaped_token
from shared.registry.references import JsonPath, contains_reference
from shared.registry.schema_refs import evaluate_tenant_schema, reference_problems, short_message
from shared.registry.schemas import UnexpectedProperties, pattern_problems, short_repr

MAX_REPORTED_ERRORS = 50
"""Problems one check reports at most: past a few dozen a client learns nothing more, and each costs work."""
MAX_SUBSCHEMAS = 2_000
"""Subschemas (the schema itself and every schema inside it) a tenant's JSON Schema may hold. Checking a schema
against the meta-schema costs about 0.3 ms for each, and nothing else bounds their number: an `allOf` of 85,000 `{}`
fits in a definition's 256 KB and cost 24 s of CPU on every save, execute and plan (ADR 0016)."""

# Where the 2020-12 meta-schema finds schemas inside a schema, by the shape of the keyword's value: every keyword
# it checks as a schema, those kept for references (`$defs`) and its older forms (`definitions`, `dependencies`).
_ONE_SUBSCHEMA = frozenset(
    {
        "additionalProperties",
        "unevaluatedProperties",
        "items",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "unevaluatedItems",
        "contentSchema",
    }
)
_SUBSCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SUBSCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "dependentSchemas", "$defs", "definitions", "dependencies"}
)


@dataclass(frozen=True)
class ValidationError:
    """One problem: where (a JSON pointer into the request body), what, and a stable machine-readable code."""

    pointer: str
    message: str
    code: str


def pointer(*path: str | int) -> str:
    """An RFC 6901 pointer for a path of keys and indexes (`~` and `/` escaped)."""
    return path_pointer(path)


def _segments(value: str) -> list[str]:
    """A pointer's reference tokens, unescaped (RFC 6901: `~1` then `~0`)."""
    if not value:
        return []
    return [unescaped_token(part) for part in value.removeprefix("/").split("/")]


def document_order(document: Any) -> Callable[[str], tuple[int, ...]]:
    """A sort key for pointers into `document`: where they appear in it, depth first. A pointer to something
    absent (a missing field) sorts right after the nearest thing present that contains it, before its children.

    Each pointer is followed from the root, one position per step (the key's place in its object, or the index):
    nothing is built per node of the document, whose long keys would otherwise repeat in every pointer below them.
    """
    places: dict[int, dict[str, int]] = {}  # id of an object followed -> its keys' positions, built once each

    def key(value: str) -> tuple[int, ...]:
        node, positions = document, list[int]()
        segments = _segments(value)
        for depth, segment in enumerate(segments):
            if isinstance(node, dict):
                if id(node) not in places:
                    places[id(node)] = {name: place for place, name in enumerate(node)}
                place = places[id(node)].get(segment)
            elif isinstance(node, list) and segment.isdecimal() and str(int(segment)) == segment:
                place = int(segment) if int(segment) < len(node) else None
            else:
                place = None
            if place is None:
                # Absent: after the container itself (a shorter key) and before any child (positions are >= 0).
                return (*positions, -1, len(segments) - depth)
            positions.append(place)
            node = node[segment] if isinstance(node, dict) else node[place]
        return tuple(positions)

    return key


def from_pydantic(exc: pydantic.ValidationError, *, prefix: JsonPath = ()) -> list[ValidationError]:
    """Pydantic's errors as problems; a custom error may name the offending key in its context (`at`)."""
    problems = []
    for error in exc.errors(include_url=False):
        # "[key]" marks an invalid dict key; the pointer is the key's own location all the same.
        loc = [part for part in error["loc"] if part != "[key]"]
        at = (error.get("ctx") or {}).get("at")
        if isinstance(at, str):
            loc.append(at)
        problems.append(ValidationError(pointer(*prefix, *loc), error["msg"], error["type"]))
    return problems


def _unexpected_keys(violation: SchemaViolation) -> tuple[str, ...]:
    """The keys an `additionalProperties` violation found unexpected, as the evaluation found them (and charged their
    searches): matching them against the patterns again here was uncharged, a long key's searches per violation."""
    return violation.keys if isinstance(violation, UnexpectedProperties) else ()


def _describe(violation: SchemaViolation) -> str:
    """A violation's message, made specific for alternatives (pydantic writes optional fields as anyOf)."""
    alternatives = violation.validator_value if violation.validator in ("anyOf", "oneOf") else None
    if (
        isinstance(alternatives, list)
        and alternatives
        and all(isinstance(option, dict) and option.keys() == {"required"} for option in alternatives)
    ):
        names = ", ".join(f"'{name}'" for option in alternatives for name in option["required"])
        return f"{'exactly ' if violation.validator == 'oneOf' else ''}one of {names} is required"
    # The branch whose type fits tells what is wrong ("-1 is less than 0", not "-1 is not of type 'null'").
    fitting = [error for error in violation.context or () if error.validator != "type"]
    error = (fitting or violation.context or [violation])[0]
    # pydantic writes an optional field as anyOf: its description is on the field, around the failing branch.
    described = [s for s in (error.schema, violation.schema) if isinstance(s, dict) and "description" in s]
    description = described[0]["description"] if described else None
    if error.validator == "pattern" and isinstance(description, str):
        # The pattern itself tells a person little; the field's description says what is expected.
        message = f"{short_repr(error.instance)} is not in the expected form: {description}"
    else:
        message = error.message
    return short_message(message)


def from_schema(
    schema: dict[str, Any], instance: Any, locate: Callable[[JsonPath], str], *, code: str, subject: str
) -> list[ValidationError]:
    """Every JSON Schema violation of `instance`, located by `locate(path inside instance)`.

    A string holding a reference is only known at run time, so violations about one are not reported. An
    unexpected property is reported at the property itself; a missing one at the object that lacks it. At most
    MAX_REPORTED_ERRORS problems are reported.
    """
    evaluation = evaluate_tenant_schema(schema, instance)
    if evaluation.unusable is not None:
        return [ValidationError(locate(()), f"{subject}: the schema cannot be evaluated ({evaluation.unusable})", code)]
    problems: list[ValidationError] = []
    for violation in sorted(evaluation.violations, key=lambda e: [str(p) for p in e.absolute_path]):
        path: JsonPath = tuple(violation.absolute_path)
        if isinstance(violation.instance, str) and contains_reference(violation.instance):
            continue
        unexpected = _unexpected_keys(violation) if violation.validator == "additionalProperties" else ()
        if unexpected:
            problems.extend(
                ValidationError(locate((*path, key)), short_message(f"{subject}: unexpected property '{key}'"), code)
                for key in unexpected[: MAX_REPORTED_ERRORS - len(problems)]
            )
        else:
            problems.append(ValidationError(locate(path), short_message(f"{subject}: {_describe(violation)}"), code))
        if len(problems) >= MAX_REPORTED_ERRORS:
            break
    return problems[:MAX_REPORTED_ERRORS]


def too_many_subschemas(schema: Any, limit: int = MAX_SUBSCHEMAS) -> str | None:
    """Why `schema` holds too many subschemas to be checked against the meta-schema, or None when it holds at most
    `limit`. Counted without recursion, and only up to the first past `limit`: a cost linear in what is counted."""
    count = 0
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            return (
                f"the schema holds more than {limit:,} subschemas (the schema itself and each one in properties,"
                f" allOf, items, $defs, ...); at most {limit:,} are allowed"
            )
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in _ONE_SUBSCHEMA and isinstance(value, dict | bool):
                stack.append(value)
            elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
                stack.extend(value)
            elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
                # `dependencies` also takes arrays of property names: only its schemas count.
                stack.extend(child for child in value.values() if isinstance(child, dict | bool))
    return None


def schema_document_problems(schema: Any, at: str, *, code: str) -> list[ValidationError]:
    """Every way `schema` fails to be a usable JSON Schema (2020-12) document, located under `at`. One holding more
    than MAX_SUBSCHEMAS subschemas is refused for that alone, before the meta-schema would check each of them."""
    crowded = too_many_subschemas(schema)
    if crowded is not None:
        return [ValidationError(at, crowded, code)]
    validator = Draft202012Validator(Draft202012Validator.META_SCHEMA)
    problems = [
        ValidationError(at + pointer(*error.absolute_path), f"not a valid JSON Schema: {error.message}", code)
        for error in validator.iter_errors(schema)
    ]
    if not problems and isinstance(schema, dict):
        # References that lead nowhere, outside the schema, back to themselves, or to too much work (ADR 0016).
        problems.extend(
            ValidationError(at + pointer(*path), message, code) for path, message in reference_problems(schema)
        )
        # Only what can be enforced in linear time is accepted (see shared/registry/schemas.py).
        problems.extend(
            ValidationError(at + pointer(*path), message, code) for path, message in pattern_problems(schema)
        )
    return problems
