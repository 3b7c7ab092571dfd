# intent_ref: platform.gateway
"""The documented shapes of the answers `qp` prints and of an execution's events, checked before they are used."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

from quantum_platform.errors import UnexpectedAnswer

_NULL = type(None)


Spec: TypeAlias = "Shape | ListOf | tuple[type, ...]"
"""What a field holds: a nested object's shape, an array of something, or the JSON types it may be (str, int, bool,
float, dict, list, None's type)."""


@dataclass(frozen=True)
class ListOf:
    """A JSON array whose every element has the shape `of`."""

    of: Spec


@dataclass(frozen=True)
class Shape:
    """A JSON object of one of the API's documented types. `required` fields must be there (the ones that name the
    item and its state: what `qp` shows and other commands take); every field of `required` and `optional` that is
    there must be of its documented type. Fields the client does not know are left alone: a newer API may add them."""

    name: str
    required: Mapping[str, Spec]
    optional: Mapping[str, Spec] = field(default_factory=dict)

    def check(self, value: Any, source: str) -> dict[str, Any]:
        """`value` itself when it has this shape; otherwise UnexpectedAnswer naming `source` (e.g. the route that
        answered it) and the first field that is missing or of another type."""
        problem = _problem(self, value, "")
        if problem is not None:
            raise UnexpectedAnswer(f"{source} answered something other than {self.name}: {problem}")
        return cast(dict[str, Any], value)


def _problem(spec: Spec, value: Any, where: str) -> str | None:
    """Why `value` (at `where`, a JSON pointer) does not have the shape `spec`, or None when it has."""
    if isinstance(spec, Shape):
        if not isinstance(value, dict):
            return f"{where or 'it'} is {_kind(value)}, not an object"
        for key in spec.required:
            if key not in value:
                return f"{where}/{key} is missing"
        for key, inner in [*spec.required.items(), *spec.optional.items()]:
            if key in value and (problem := _problem(inner, value[key], f"{where}/{key}")) is not None:
                return problem
        return None
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return f"{where} is {_kind(value)}, not a list"
        for index, element in enumerate(value):
            if (problem := _problem(spec.of, element, f"{where}/{index}")) is not None:
                return problem
        return None
    if any(_is(value, kind) for kind in spec):
        return None
    expected = " or ".join(_NAMES[kind] for kind in spec)
    return f"{where or 'it'} is {_kind(value)}, not {expected}"


def _is(value: Any, kind: type) -> bool:
    # JSON has no bool among its numbers: `true` is not a version, an attempt or a count.
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "a list",
    _NULL: "null",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    for kind in (str, dict, list, _NULL):
        if isinstance(value, kind):
            return _NAMES[kind]
    return type(value).__name__


TEXT, INTEGER, BOOLEAN, OBJECT = (str,), (int,), (bool,), (dict,)
MAYBE_TEXT, MAYBE_INTEGER, MAYBE_OBJECT = (str, _NULL), (int, _NULL), (dict, _NULL)
TEXTS = ListOf(TEXT)

STEP = Shape(
    "a step",
    required={"step_id": TEXT, "state": TEXT},
    optional={
        "action": TEXT,
        "attempt": INTEGER,
        "attempts": ListOf(OBJECT),
        "child_execution_id": MAYBE_TEXT,
        "error": MAYBE_TEXT,
        "finished_at": MAYBE_TEXT,
        "max_attempts": INTEGER,
        "retry_at": MAYBE_TEXT,
        "reused": BOOLEAN,
        "started_at": MAYBE_TEXT,
    },
)
_EXECUTION_FIELDS: dict[str, Spec] = {
    "intent_id": TEXT,
    "intent_version": INTEGER,
    "target": TEXT,
    "requested_by": TEXT,
    "created_at": TEXT,
    "updated_at": TEXT,
    "finished_at": MAYBE_TEXT,
}
EXECUTION = Shape(
    "an execution",
    required={"id": TEXT, "status": TEXT, "steps": ListOf(STEP)},
    optional={
        **_EXECUTION_FIELDS,
        "error": MAYBE_TEXT,
        "wait_reason": MAYBE_TEXT,
        "input": OBJECT,
        "last_event_seq": INTEGER,
        "links": OBJECT,
        "parent_execution_id": MAYBE_TEXT,
        "plan_hash": MAYBE_TEXT,
        "retry_of": MAYBE_TEXT,
    },
)
EXECUTION_SUMMARY = Shape("an execution", required={"id": TEXT, "status": TEXT}, optional=_EXECUTION_FIELDS)
STARTED = Shape(
    "a started execution",
    required={"execution_id": TEXT, "status": TEXT},
    optional={"created": BOOLEAN, "links": OBJECT},
)
CANCELLED = Shape("an accepted cancel", required={"execution_id": TEXT, "status": TEXT, "cancel_requested": BOOLEAN})
DECIDED = Shape(
    "a recorded decision",
    required={"execution_id": TEXT, "step_id": TEXT, "decision": TEXT},
    optional={"applied": BOOLEAN},
)
EVENT = Shape(
    "an event",
    required={"type": TEXT},
    # `seq` is checked by the event rules themselves (an `id:` may stand for it).
    optional={
        "step": MAYBE_TEXT,
        "step_id": MAYBE_TEXT,
        "data": OBJECT,
        "error": MAYBE_TEXT,
        "occurred_at": TEXT,
    },
)

_DEFINITION_FIELDS: dict[str, Spec] = {
    "version": INTEGER,
    "status": TEXT,
    "description": TEXT,
    "labels": OBJECT,
    "created_at": TEXT,
    "updated_at": TEXT,
    "archived_at": MAYBE_TEXT,
}
INTENT = Shape(
    "an intent",
    required={"id": TEXT, "name": TEXT},
    optional={
        **_DEFINITION_FIELDS,
        "definition": OBJECT,
        "origin": OBJECT,
        "created_by": TEXT,
        "blueprint_ref": MAYBE_OBJECT,
        "version_created_at": TEXT,
        "version_created_by": TEXT,
    },
)
INTENT_SUMMARY = Shape("an intent", required={"id": TEXT, "name": TEXT}, optional=_DEFINITION_FIELDS)
VERSION = Shape(
    "an intent's version",
    required={"version": INTEGER},
    optional={
        "created_at": TEXT,
        "created_by": TEXT,
        "definition": OBJECT,
        "definition_sha256": TEXT,
        "description": TEXT,
        "labels": OBJECT,
        "origin": OBJECT,
        "blueprint_ref": MAYBE_OBJECT,
    },
)
DIFF = Shape(
    "a diff of two versions",
    required={"from_version": INTEGER, "to_version": INTEGER},
    optional={
        "summary": TEXT,
        "fields_changed": ListOf(OBJECT),
        "metadata_changed": ListOf(OBJECT),
        "steps_added": TEXTS,
        "steps_changed": ListOf(OBJECT),
        "steps_removed": TEXTS,
        "steps_reordered": BOOLEAN,
        "changes_left_out": INTEGER,
    },
)
_LEVELS = ListOf(TEXTS)
PLAN = Shape(
    "a plan",
    required={"id": TEXT, "levels": _LEVELS},
    optional={
        "name": TEXT,
        "version": INTEGER,
        "status": TEXT,
        "plan_hash": TEXT,
        "steps": ListOf(OBJECT),
        "quota": OBJECT,
        "target": MAYBE_TEXT,
        "blueprint_ref": MAYBE_TEXT,
        "caller_may_execute": (bool, _NULL),
    },
)
VALIDATION = Shape(
    "a validation",
    required={"levels": _LEVELS},
    optional={
        "valid": BOOLEAN,
        "name": TEXT,
        "plan_hash": TEXT,
        "definition": OBJECT,
        "description": TEXT,
        "labels": OBJECT,
        "blueprint_ref": MAYBE_TEXT,
    },
)

SUBSCRIPTION = Shape(
    "a webhook subscription",
    required={"id": TEXT, "url": TEXT},
    optional={
        "event_types": TEXTS,
        "enabled": BOOLEAN,
        "description": TEXT,
        "consecutive_failures": INTEGER,
        "disabled_reason": MAYBE_TEXT,
        "secret": MAYBE_TEXT,
        "created_at": TEXT,
        "updated_at": TEXT,
    },
)
SECRET = Shape("a signing secret", required={"id": TEXT, "secret": TEXT})
DELIVERY = Shape(
    "a delivery",
    required={"message_id": TEXT},
    optional={
        "event_type": TEXT,
        "state": TEXT,
        "attempts": INTEGER,
        "last_status": MAYBE_INTEGER,
        "last_error": MAYBE_TEXT,
        "created_at": TEXT,
        "delivered_at": MAYBE_TEXT,
        "next_attempt_at": TEXT,
    },
)
ME = Shape(
    "the signed-in caller",
    required={"principal_id": TEXT, "tenant_name": TEXT},
    optional={
        "tenant_id": TEXT,
        "entra_tenant_id": TEXT,
        "object_id": TEXT,
        "roles": TEXTS,
        "scopes": TEXTS,
        "app_only": BOOLEAN,
    },
)


def page_of(name: str, item: Shape, *, cursor: bool = True) -> Shape:
    """A listing's answer (`name`, e.g. "a page of executions"): `{"items": [...]}` of `item`, and its `next_cursor`
    when the route pages."""
    optional: dict[str, Spec] = {"next_cursor": MAYBE_TEXT} if cursor else {}
    return Shape(name, required={"items": ListOf(item)}, optional=optional)
