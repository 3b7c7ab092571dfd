# intent_ref: platform.registry
"""The intent definition model (DESIGN §7): steps with parameters, dependencies, retries, compensation, conditions."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shared import accepted_json
from shared.registry.references import STEP_ID_PATTERN
from shared.registry.when import WhenExpr, WhenSyntaxError, parse_when

# At most 63 characters: the names column's CHECK (migration 0003) stores no more, and the list filter's name_prefix
# takes as many. One more here passed validation and the published schema, then failed the insert.
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
ACTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
StepId = Annotated[str, StringConstraints(pattern=rf"^{STEP_ID_PATTERN}$")]
ActionName = Annotated[str, StringConstraints(pattern=ACTION_PATTERN)]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9._/-]{0,61}[a-z0-9])?$")]
LabelValue = Annotated[str, StringConstraints(max_length=256)]
Target = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
MAX_LABELS = 64
"""Labels of an intent or blueprint, at most."""

READ_ONLY_FIELDS = frozenset({"id", "version", "tenant_id", "status", "created_at", "updated_at"})
"""Fields of a stored intent that a request may echo back (the seed's registry example does); they are ignored."""
DEFINITION_FIELDS = frozenset({"target", "inputs", "steps", "blueprint"})
"""The fields of a definition itself; a declaration's other fields are its blueprint's inputs."""
MAX_TIMEOUT_S = 30 * 24 * 3600

# Beside-action parameters make the model's JSON Schema open; the validator checks them against the module.
_OPEN_SCHEMA: dict[str, Any] = {"additionalProperties": True}


def _params_beside_action(data: Any, known: Collection[str]) -> Any:
    """The seed's style (`{"action": "x", "image": "..."}`) normalised: every key that is not a field goes to params."""
    if not isinstance(data, dict):
        return data
    beside = {key: value for key, value in data.items() if key not in known}
    if not beside:
        return data
    params = data.get("params")
    kept = {key: value for key, value in data.items() if key in known}
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        return kept  # `params` reports its own type error; the beside keys would only add noise
    clash = sorted(beside.keys() & params.keys())
    if clash:
        raise PydanticCustomError(
            "param_conflict",
            "parameter '{name}' is given both beside action and in params",
            {"name": clash[0], "at": clash[0]},
        )
    return {**kept, "params": {**params, **beside}}


def merged_params(raw: Mapping[str, Any], known: Collection[str]) -> dict[str, Any] | None:
    """A raw step's (or compensation's) parameters from both places; None when `params` is not an object."""
    params = raw.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return None
    return {**{key: value for key, value in raw.items() if key not in known}, **params}


def _accepted_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters hold only finite numbers and storable text, whatever built them (stored ones always do)."""
    found = accepted_json.refusals(params, bound_integers=False)
    if found:
        first = found[0]
        at = accepted_json.unescaped_token(first.pointer.split("/")[1])
        raise PydanticCustomError(
            "not_accepted", "{detail} (at {pointer})", {"detail": first.detail, "pointer": first.pointer, "at": at}
        )
    return params


class RetryPolicy(BaseModel):
    """Attempts with exponential backoff: the wait before attempt n+1 is initial × backoff^(n-1), capped."""

    model_config = ConfigDict(strict=True, extra="forbid")

    max_attempts: int = Field(3, ge=1, le=100)
    initial_interval_s: float = Field(1.0, gt=0, le=86400)
    backoff: float = Field(2.0, ge=1, le=100)
    max_interval_s: float | None = Field(None, gt=0, le=86400)

    @model_validator(mode="after")
    def _cap_not_below_initial(self) -> RetryPolicy:
        if self.max_interval_s is not None and self.max_interval_s < self.initial_interval_s:
            raise PydanticCustomError(
                "retry_interval", "max_interval_s must not be below initial_interval_s", {"at": "max_interval_s"}
            )
        return self

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2 is the first retry)."""
        delay = self.initial_interval_s * self.backoff ** max(attempt - 2, 0)
        return delay if self.max_interval_s is None else min(delay, self.max_interval_s)


class Compensation(BaseModel):
    """The action that undoes a completed step when a later one fails; parameters as for a step."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=_OPEN_SCHEMA)

    action: ActionName
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _normalise_params(cls, data: Any) -> Any:
        return _params_beside_action(data, COMPENSATION_FIELDS)

    _accepted = field_validator("params")(_accepted_params)


class Step(BaseModel):
    """One step: an action handled by a module, its parameters and how it is scheduled."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=_OPEN_SCHEMA)

    id: StepId | None = None
    action: ActionName
    params: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] | None = Field(None, description="Absent: after the previous step. An empty list: a root.")
    retry: RetryPolicy | None = None
    timeout_s: int | None = Field(None, ge=1, le=MAX_TIMEOUT_S)
    compensate: Compensation | None = None
    when: str | None = Field(None, description="A condition on ${inputs.x} and ${steps.<id>.output...}.")

    @model_validator(mode="before")
    @classmethod
    def _normalise_params(cls, data: Any) -> Any:
        return _params_beside_action(data, STEP_FIELDS)

    _accepted = field_validator("params")(_accepted_params)

    @field_validator("when")
    @classmethod
    def _parse_when(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_when(value)
            except WhenSyntaxError as exc:
                raise PydanticCustomError("invalid_when", "invalid condition: {reason}", {"reason": str(exc)}) from exc
        return value

    @property
    def step_id(self) -> str:
        """The id, assigned by the time a step belongs to a Definition."""
        if self.id is None:
            raise ValueError(f"step {self.action!r} has no id yet (ids are assigned by Definition)")
        return self.id

    def condition(self) -> WhenExpr | None:
        """The parsed `when` condition."""
        return None if self.when is None else parse_when(self.when)


STEP_FIELDS = frozenset(Step.model_fields)
COMPENSATION_FIELDS = frozenset(Compensation.model_fields)


def _slug(action: str) -> str:
    # Room is kept for a "-<n>" suffix within the 64 characters of a step id.
    return re.sub(r"[^a-z0-9]+", "-", action.lower()).strip("-")[:56].strip("-") or "step"


def assign_step_ids(steps: Sequence[tuple[str | None, str | None]]) -> list[str]:
    """Ids for (explicit id, action) pairs: explicit ones kept, the others the action's slug, then `-2`, `-3`…
    in list order, skipping every id already taken. The same definition always gets the same ids."""
    taken = {step_id for step_id, _ in steps if step_id is not None}
    ids: list[str] = []
    for step_id, action in steps:
        if step_id is None:
            base = _slug(action or "step")
            step_id, n = base, 1
            while step_id in taken:
                n += 1
                step_id = f"{base}-{n}"
            taken.add(step_id)
        ids.append(step_id)
    return ids


def raw_step_ids(raw_steps: Sequence[Any]) -> list[str]:
    """The id of each raw step as sent: its own when it is a string, else the generated one."""

    def pair(step: Any) -> tuple[str | None, str | None]:
        if not isinstance(step, dict):
            return None, None
        step_id, action = step.get("id"), step.get("action")
        return (step_id if isinstance(step_id, str) else None), (action if isinstance(action, str) else None)

    return assign_step_ids([pair(step) for step in raw_steps])


def normalize_raw_steps(raw_steps: Sequence[Any]) -> list[Any]:
    """Raw steps with `id` and `depends_on` filled in: generated ids, and "after the previous step" made explicit."""
    ids = raw_step_ids(raw_steps)
    normalized: list[Any] = []
    for index, step in enumerate(raw_steps):
        if isinstance(step, dict):
            step = dict(step)
            if step.get("id") is None:
                step["id"] = ids[index]
            if step.get("depends_on") is None:
                step["depends_on"] = [ids[index - 1]] if index else []
        normalized.append(step)
    return normalized


class Definition(BaseModel):
    """What an intent does: a target, an optional input schema, and steps — or, without steps, a declaration
    whose other fields are the inputs of a blueprint (named by `blueprint`, else by the intent's name)."""

    model_config = ConfigDict(strict=True, extra="allow")

    target: Target | None = None
    inputs: dict[str, Any] | None = Field(None, description="JSON Schema of the execution inputs.")
    steps: list[Step] | None = Field(None, min_length=1)
    blueprint: Slug | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise_steps(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("steps"), list):
            return {**data, "steps": normalize_raw_steps(data["steps"])}
        return data

    @property
    def is_declaration(self) -> bool:
        return self.steps is None

    def declared_state(self) -> dict[str, Any]:
        """A declaration's blueprint inputs: its target and every field that is not a definition field."""
        state: dict[str, Any] = {} if self.target is None else {"target": self.target}
        state.update(self.model_extra or {})
        return state

    def to_document(self) -> dict[str, Any]:
        """The normalized definition as JSON: unset fields left out, declaration fields kept verbatim."""
        extra = self.model_extra or {}
        document = self.model_dump(mode="json", exclude_none=True, exclude=set(extra))
        document.update(extra)
        return document


class IntentDefinitionIn(BaseModel):
    """A request to create or update an intent (or a blueprint: the same shape)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: Slug
    description: str = Field("", max_length=4000)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)
    definition: Definition

    @model_validator(mode="before")
    @classmethod
    def _ignore_read_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.keys() & READ_ONLY_FIELDS:
            return {key: value for key, value in data.items() if key not in READ_ONLY_FIELDS}
        return data


@dataclass(frozen=True)
class ResolvedBlueprint:
    """The blueprint version a declaration is validated and planned against."""

    name: str
    version: int
    definition: Definition

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"
