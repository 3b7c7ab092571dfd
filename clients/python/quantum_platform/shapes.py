# intent_ref: platform.gateway
"""The documented shapes of the answers `qp` prints and of an execution's events, checked before they are used."""

from __future__ import annotations

from collections.abc import Mapping
from functools import reduce
from types import NoneType, UnionType
from typing import Any, Generic, TypeVar, Union, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from quantum_platform.errors import UnexpectedAnswer

# The answer itself is what a check returns, never a model: a field's default is never read, it only makes the field
# one the answer may leave out (a field that is there must still be of its type, null only where the type says so).
ABSENT: Any = None


class Answer(BaseModel):
    """A JSON object of one of the API's documented types: fields without a default must be there (the ones that name
    the item and its state: what `qp` shows and other commands take), and every field that is there must be of its
    documented type; `true` is not a number. Fields the client does not know are left alone: a newer API may add
    them."""

    model_config = ConfigDict(extra="allow", strict=True)


class Shape:
    """One documented answer, `name`d for the message (e.g. "an execution"), and the type that describes it."""

    def __init__(self, name: str, model: Any) -> None:
        self.name, self.model, self._adapter = name, model, TypeAdapter[Any](model)

    def check(self, value: Any, source: str) -> dict[str, Any]:
        """`value` itself when it has this shape; otherwise UnexpectedAnswer naming `source` (e.g. the route that
        answered it) and the first field that is missing or of another type."""
        try:
            self._adapter.validate_python(value, strict=True)
        except ValidationError as invalid:
            error = min(invalid.errors(), key=lambda error: _order(self.model, error))
            where = "".join(f"/{step}" for step in error["loc"])
            if error["type"] == "missing":
                problem = f"{where} is missing"
            elif error["type"] == "invalid_key":  # never in JSON, but a program may check a dict of its own
                problem = f"{where.rsplit('/', 1)[0] or 'it'} has a key that is not text: {error['loc'][-1]!r}"
            else:
                expected = " or ".join(_NAMES[option] for option in _kinds_at(self.model, error["loc"]))
                problem = f"{where or 'it'} is {kind(error['input'])}, not {expected}"
            raise UnexpectedAnswer(f"{source} answered something other than {self.name}: {problem}") from None
        return cast(dict[str, Any], value)


def _order(annotation: Any, error: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Where `error` comes in the order the answer is read: in each object, a missing field first, then the fields it
    requires, then the others, each in the documented order; in each list, element by element."""
    order, loc = [], error["loc"][:-1] if error["type"] == "invalid_key" else error["loc"]
    for depth, step in enumerate(loc):
        if isinstance(step, str):
            fields, missing = annotation.model_fields, error["type"] == "missing" and depth == len(loc) - 1
            order.append((0 if missing else 1 if fields[step].is_required() else 2, list(fields).index(step)))
        else:
            order.append((1, step))
        annotation = _inner(annotation, step)
    return order


def _inner(annotation: Any, step: int | str) -> Any:
    """The type of a list's element or of a model's field."""
    return get_args(annotation)[0] if isinstance(step, int) else annotation.model_fields[step].annotation


def _kinds_at(annotation: Any, loc: tuple[int | str, ...]) -> list[type]:
    """The JSON types (as Python types, an object as `dict`) the field at `loc` of `annotation` may hold."""
    annotation = reduce(_inner, loc, annotation)
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return [
        dict if isinstance(option, type) and issubclass(option, BaseModel) else get_origin(option) or option
        for option in options
    ]


_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "a list",
    NoneType: "null",
}


def kind(value: Any) -> str:
    """The JSON type of `value` as a message names it ("a string", "a number", "an object", ...)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return next(
        (_NAMES[option] for option in (str, dict, list, NoneType) if isinstance(value, option)), type(value).__name__
    )


Object = dict[Any, Any]  # a JSON object: its keys are text, its values anything


class Step(Answer):
    step_id: str
    state: str
    action: str = ABSENT
    attempt: int = ABSENT
    attempts: list[Object] = ABSENT
    child_execution_id: str | None = None
    error: str | None = None
    finished_at: str | None = None
    max_attempts: int = ABSENT
    retry_at: str | None = None
    reused: bool = ABSENT
    started_at: str | None = None


class ExecutionSummary(Answer):
    id: str
    status: str
    intent_id: str = ABSENT
    intent_version: int = ABSENT
    target: str = ABSENT
    requested_by: str = ABSENT
    created_at: str = ABSENT
    updated_at: str = ABSENT
    finished_at: str | None = None


class Execution(ExecutionSummary):
    steps: list[Step]
    error: str | None = None
    wait_reason: str | None = None
    input: Object = ABSENT
    last_event_seq: int = ABSENT
    links: Object = ABSENT
    parent_execution_id: str | None = None
    plan_hash: str | None = None
    retry_of: str | None = None


class Started(Answer):
    execution_id: str
    status: str
    created: bool = ABSENT
    links: Object = ABSENT


class Cancelled(Answer):
    execution_id: str
    status: str
    cancel_requested: bool


class Decided(Answer):
    execution_id: str
    step_id: str
    decision: str
    applied: bool = ABSENT


class Event(Answer):
    type: str
    # `seq` is checked by the event rules themselves (an `id:` may stand for it).
    step: str | None = None
    step_id: str | None = None
    data: Object = ABSENT
    error: str | None = None
    occurred_at: str = ABSENT


class IntentSummary(Answer):
    id: str
    name: str
    version: int = ABSENT
    status: str = ABSENT
    description: str = ABSENT
    labels: Object = ABSENT
    created_at: str = ABSENT
    updated_at: str = ABSENT
    archived_at: str | None = None


class Intent(IntentSummary):
    definition: Object = ABSENT
    origin: Object = ABSENT
    created_by: str = ABSENT
    blueprint_ref: Object | None = None
    version_created_at: str = ABSENT
    version_created_by: str = ABSENT


class Version(Answer):
    version: int
    created_at: str = ABSENT
    created_by: str = ABSENT
    definition: Object = ABSENT
    definition_sha256: str = ABSENT
    description: str = ABSENT
    labels: Object = ABSENT
    origin: Object = ABSENT
    blueprint_ref: Object | None = None


class Diff(Answer):
    from_version: int
    to_version: int
    summary: str = ABSENT
    fields_changed: list[Object] = ABSENT
    metadata_changed: list[Object] = ABSENT
    steps_added: list[str] = ABSENT
    steps_changed: list[Object] = ABSENT
    steps_removed: list[str] = ABSENT
    steps_reordered: bool = ABSENT
    changes_left_out: int = ABSENT


class Plan(Answer):
    id: str
    levels: list[list[str]]
    name: str = ABSENT
    version: int = ABSENT
    status: str = ABSENT
    plan_hash: str = ABSENT
    steps: list[Object] = ABSENT
    quota: Object = ABSENT
    target: str | None = None
    blueprint_ref: str | None = None
    caller_may_execute: bool | None = None


class Validation(Answer):
    levels: list[list[str]]
    valid: bool = ABSENT
    name: str = ABSENT
    plan_hash: str = ABSENT
    definition: Object = ABSENT
    description: str = ABSENT
    labels: Object = ABSENT
    blueprint_ref: str | None = None


class Subscription(Answer):
    id: str
    url: str
    event_types: list[str] = ABSENT
    enabled: bool = ABSENT
    description: str = ABSENT
    consecutive_failures: int = ABSENT
    disabled_reason: str | None = None
    secret: str | None = None
    created_at: str = ABSENT
    updated_at: str = ABSENT


class Secret(Answer):
    id: str
    secret: str


class Delivery(Answer):
    message_id: str
    event_type: str = ABSENT
    state: str = ABSENT
    attempts: int = ABSENT
    last_status: int | None = None
    last_error: str | None = None
    created_at: str = ABSENT
    delivered_at: str | None = None
    next_attempt_at: str = ABSENT


class Me(Answer):
    principal_id: str
    tenant_name: str
    tenant_id: str = ABSENT
    entra_tenant_id: str = ABSENT
    object_id: str = ABSENT
    roles: list[str] = ABSENT
    scopes: list[str] = ABSENT
    app_only: bool = ABSENT


Item = TypeVar("Item")


class Items(Answer, Generic[Item]):
    """A listing's answer: `{"items": [...]}`."""

    items: list[Item]


class Page(Items[Item], Generic[Item]):
    """A paged listing's answer: its items and the cursor of the next page."""

    next_cursor: str | None = None


STEP = Shape("a step", Step)
EXECUTION = Shape("an execution", Execution)
EXECUTION_SUMMARY = Shape("an execution", ExecutionSummary)
STARTED = Shape("a started execution", Started)
CANCELLED = Shape("an accepted cancel", Cancelled)
DECIDED = Shape("a recorded decision", Decided)
EVENT = Shape("an event", Event)
INTENT = Shape("an intent", Intent)
INTENT_SUMMARY = Shape("an intent", IntentSummary)
VERSION = Shape("an intent's version", Version)
DIFF = Shape("a diff of two versions", Diff)
PLAN = Shape("a plan", Plan)
VALIDATION = Shape("a validation", Validation)
SUBSCRIPTION = Shape("a webhook subscription", Subscription)
SECRET = Shape("a signing secret", Secret)
DELIVERY = Shape("a delivery", Delivery)
ME = Shape("the signed-in caller", Me)


def page_of(name: str, item: Shape, *, cursor: bool = True) -> Shape:
    """A listing's answer (`name`, e.g. "a page of executions"): `{"items": [...]}` of `item`, and its `next_cursor`
    when the route pages."""
    return Shape(name, (Page if cursor else Items)[item.model])
