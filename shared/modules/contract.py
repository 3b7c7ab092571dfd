# intent_ref: platform.modules
"""The module contract: a context, a typed parameter model, a handler returning JSON, an optional compensation."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError

from shared import accepted_json

P = TypeVar("P", bound=BaseModel)
Phase = Literal["run", "compensate"]

MAX_REPORTED_ERRORS = 10
_LOGGER = logging.getLogger("shared.modules")
# A surrogate as ASCII JSON writes it (paired ones too: the walk tells them apart).
_SURROGATE_ESCAPE = re.compile(r"\\ud[89a-f]")
# As many digits as the smallest integer beyond a bigint has (2**63: 19), in a string or a number.
_LONG_DIGITS = re.compile(r"[0-9]{19}")


class StepFailed(Exception):
    """The step's work failed; the message is shown to the user as the step's error."""

    def __init__(self, message: str, *, retryable: bool = True, details: Mapping[str, Any] | None = None) -> None:
        # Messages quote what endpoints answered; one holding a NUL could not be recorded as the step's error.
        message = accepted_json.storable_text(message)
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        """False when another attempt cannot succeed (bad parameters, a refused URL); retry policy still decides."""
        self.details: dict[str, Any] = dict(details or {})


class Abandoned(StepFailed):
    """A step failure only because the attempt was abandoned (`ModuleContext.abandoned` set): the module stopped
    short when told to, not because of what its work met. Retryable; the worker tells it from the module's own
    failures, which stand however late they come."""

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, retryable=True, details=details)


@dataclass(frozen=True)
class ModuleContext:
    """What a handler knows about the step attempt it runs."""

    tenant_id: UUID
    execution_id: str
    step_id: str
    attempt: int
    logger: logging.Logger = _LOGGER
    tenant_settings: Mapping[str, Any] = field(default_factory=dict)
    """The tenant's module settings, e.g. `allowed_hosts` (SSRF allow-list) and `base_url`."""
    phase: Phase = "run"
    """The step's own work, or the compensation that undoes it."""
    deadline: float | None = None
    """When (`time.monotonic()`) the worker stops waiting for this attempt and records it timed out; None: no
    deadline is known. A thread cannot be stopped, so a module that polls or waits bounds itself by it (ADR 0026)."""
    abandoned: threading.Event = field(default_factory=threading.Event, compare=False)
    """Set once nobody waits for this attempt's result any more (its deadline passed, its claim was lost, the host
    is stopping): a module that polls or waits ends at once instead of holding its thread."""

    def time_left(self) -> float | None:
        """Seconds until the attempt's deadline (0 once it has passed); None when there is none."""
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.0)

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of one attempt, so side effects can be deduplicated on it; a compensation's
        differs from its step's, so that a receiver deduplicating on it does not take the undo for the step again."""
        if self.phase == "compensate":
            return f"{self.execution_id}:{self.step_id}:compensate:{self.attempt}"
        # The step's own key keeps the form it had before compensations had one of their own, so that an attempt
        # redelivered across that change keeps its event id and its Idempotency-Key.
        return f"{self.execution_id}:{self.step_id}:{self.attempt}"


class Module(ABC, Generic[P]):
    """A built-in action. Subclasses set `action`, `params_model`, `timeout_s` and implement `run`."""

    action: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    timeout_s: ClassVar[int] = 300
    answers_quickly: ClassVar[bool] = False
    """Its result usually comes within milliseconds (no network beyond the platform's own stores): the dispatch that
    starts it waits a moment to answer the result itself (ADR 0034). A module that may take long leaves this off, so
    no dispatch holds an activity slot waiting for it."""

    @abstractmethod
    def run(self, ctx: ModuleContext, params: P) -> Any:
        """Do the work; return a JSON-serialisable output or raise `StepFailed`."""

    def compensate(self, ctx: ModuleContext, params: P, output: Any) -> None:
        """Undo a completed `run` (only called when `has_compensation`)."""
        raise NotImplementedError(f"{self.action} has no compensation")

    @property
    def has_compensation(self) -> bool:
        return type(self).compensate is not Module.compensate

    def parse(self, raw_params: Any) -> P:
        """Validate raw parameters; a bad value is a non-retryable step failure naming each field."""
        try:
            return self.params_model.model_validate(raw_params)  # type: ignore[return-value]
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            lines = [
                f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in errors[:MAX_REPORTED_ERRORS]
            ]
            raise StepFailed(
                f"invalid parameters for {self.action}: " + "; ".join(lines),
                retryable=False,
                details={"errors": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in errors]},
            ) from None


def invoke(module: Module[Any], ctx: ModuleContext, raw_params: Any) -> Any:
    """Validate, run and check the output of one module; every failure comes out as `StepFailed`."""
    params = module.parse(raw_params)
    try:
        output = module.run(ctx, params)
    except StepFailed:
        raise
    except Exception as exc:
        # An unexpected error is still a step outcome: the orchestrator records and retries it, never loses it.
        ctx.logger.exception("module %s failed unexpectedly (%s)", module.action, ctx.idempotency_key)
        raise StepFailed(f"{module.action} failed: {type(exc).__name__}: {exc}") from exc
    try:
        text = json.dumps(output, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StepFailed(f"{module.action} returned an output that is not JSON: {exc}", retryable=False) from exc
    unstorable = _unstorable(output, text)
    if unstorable is not None:
        # A hostile endpoint's JSON can hold these: as a failed step, not a result the database refuses to record
        # (which failed the whole batch and left the step to its timeout).
        raise StepFailed(f"{module.action} returned an output that cannot be stored: {unstorable}", retryable=False)
    return output


def _unstorable(output: Any, text: str) -> str | None:
    """Where and why `output` (as JSON `text`, ASCII-escaped) cannot be stored as it is: a NUL, a lone surrogate, an
    integer beyond a bigint, nesting deeper than the accepted JSON's; None when it can.

    An integer beyond a bigint is refused as the API's edge refuses it: jsonb keeps it, but it reads back as a float
    (`shared.db.json_values`), so 2**64 + 1 and 18446744073709551557 both came back as 1.8446744073709552e+19 in the
    step's recorded output, its verdict, its events and the references to it."""
    if accepted_json.nesting_depth(text) > accepted_json.MAX_DEPTH:
        return f"it nests deeper than {accepted_json.MAX_DEPTH} levels"
    # NULs and surrogates appear only as escapes in ASCII JSON, and an integer beyond a bigint only as a run of 19
    # digits or more: the walk that names the place runs only when one may be there.
    # And a member name that is not a string may be written like another name of its object (`1` and `"1"`), whatever
    # else the text holds: a cheaper walk (no paths) tells whether an object has one, and the walk then runs.
    if (
        "\\u0000" not in text
        and not _SURROGATE_ESCAPE.search(text)
        and not _LONG_DIGITS.search(text)
        and not accepted_json.has_non_string_names(output)
    ):
        return None
    # A member name that is not a string is stored as json.dumps writes it (`{200: 3}` as `{"200": 3}`), as outputs
    # always were: refused only here, the same output was accepted or refused by whether the pre-check above ran.
    # Two names written alike (`{1: "a", "1": "b"}`) are refused (a member given more than once): stored, one value
    # was silently lost.
    found = accepted_json.refusals(output, bound_integers=True, names_as_dumped=True)
    return f"{found[0].pointer or '(output)'}: {found[0].detail}" if found else None


def run_registered(modules: Mapping[str, Module[Any]], action: str, ctx: ModuleContext, raw_params: Any) -> Any:
    """Run `action` from `modules`; an unknown action is a non-retryable step failure."""
    module = modules.get(action)
    if module is None:
        raise StepFailed(f"unknown action {action!r}", retryable=False)
    return invoke(module, ctx, raw_params)
