# intent_ref: platform.execution
"""The state machine's types: its vocabulary, the activities' typed models, its events and commands, its state."""

# Apart from the reducer (shared/engine/machine.py, which re-exports every name here) so that each reads on its own;
# the orchestrator and the activities speak these types, the reducer decides with them.

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.engine.graph import RunState, StepGraph, output_readers, referenced_output_paths
from shared.engine.protocol import StepPlan
from shared.registry.model import Definition, RetryPolicy, Step

Json = Any
_ONE_ATTEMPT = RetryPolicy(max_attempts=1)


# ------------------------------------------------------------------------------------------------ vocabulary
class StepKind(StrEnum):
    """How a step runs: module work over `module-work`, or an action the engine carries out itself."""

    MODULE = "module"
    APPROVAL = "approval"
    WAIT = "wait"
    INTENT = "intent"


class Phase(StrEnum):
    RUN = "run"
    COMPENSATE = "compensate"


class Stage(StrEnum):
    """Where one attempt stands. Its outcome is accepted only from RUNNING, CHILD or STOPPING: after its start is
    recorded."""

    STARTING = "starting"  # the dispatch is out; its start is not recorded yet
    RUNNING = "running"  # start recorded: waiting for the result, the wait's end, or the child to start
    CHILD = "child"  # the child execution's orchestration runs
    SETTLING = "settling"  # an outcome the engine observed is being recorded; the answer is the verdict applied
    PAUSED = "paused"  # between attempts, until the backoff ends (and the retry is recorded)
    STOPPING = "stopping"  # an intent.run attempt timed out: its child is told to cancel, and it ends when the child
    # does, by the child's success or else by its timeout (rules 11)


class RunPhase(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    ENDED = "ended"


class Status(StrEnum):
    """An execution's recorded status (app.executions.status)."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPENSATING = "compensating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class NoteKind(StrEnum):
    """A step move the engine decides without an attempt result."""

    SKIPPED = "skipped"
    FAILED = "failed"  # failed before it ran (its parameters could not be resolved)
    RETRYING = "retrying"
    ABANDONED = "abandoned"
    COMPENSATION_RETRYING = "compensation_retrying"  # a compensation attempt failed and another is due (rules 5)
    COMPENSATION_FAILED = "compensation_failed"  # a compensation given up before it began (rules 9)


class Activity(StrEnum):
    """The activities the orchestrator calls, each a verb taking one model."""

    DISPATCH_STEPS = "dispatch_steps"
    RECORD_OUTCOMES = "record_outcomes"
    RECORD_STATUS = "record_status"
    LOAD_OUTPUT = "load_output"
    CANCEL_CHILD = "cancel_child"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ------------------------------------------------------------------------------------------------ activity models
class Verdict(_Model):
    """An attempt's result as recorded: the first one applied wins."""

    ok: bool
    output: Json = None
    error: str | None = None
    retryable: bool = True
    state: str | None = None
    cancel_first: bool = False
    """A run attempt's failure recorded while a cancel was recorded: the cancel came first, whatever reaches the
    orchestration first (rules 7, ADR 0014)."""


class StepStart(_Model):
    """Start one attempt: record it, then put module work on `module-work` or start the engine's own action."""

    step_id: str
    phase: Phase
    attempt: int = Field(ge=1)
    kind: StepKind
    action: str
    params: dict[str, Json]
    remote: bool = False
    timeout_s: int | None = None


class StepNote(_Model):
    """Record a step move that has no attempt result (each kind is conditional, so a re-run records once)."""

    kind: NoteKind
    step_id: str
    attempt: int = 1
    error: str | None = None
    next_attempt: int | None = None
    max_attempts: int | None = None
    retry_at: str | None = None


class Carry(_Model):
    """What lets a dispatch carry on to the levels after its own (ADR 0036): its activity id and the orchestration's
    state while it waits for the answer, so the dispatch can reduce its own answer as the orchestration will."""

    activity_id: str
    state: dict[str, Json]


class DispatchSteps(_Model):
    """`dispatch_steps`: moves to `running` first if pending, records notes and starts, then `status` if waiting.

    Starts of the run phase are refused (nothing recorded) when the execution has ended or a cancel is recorded.
    """

    execution_id: str
    tenant_id: str
    notes: list[StepNote] = Field(default_factory=list)
    starts: list[StepStart] = Field(default_factory=list)
    status: Status | None = None
    finish: dict[str, Json] | None = None
    """Set on the last level: the outputs of the steps done so far. When the dispatch answers every start's result
    and all are ok, it records the run's success with these outputs and theirs (ADR 0034)."""
    carry: Carry | None = None
    """Attached by the orchestrator to a carrying dispatch (Pending.carrying); not part of the batch itself."""

    def digest(self) -> str:
        """The batch without its carry: what tells the dispatch a carried level was the one the reducer asks for."""
        body = self.model_dump(mode="json", exclude={"carry"})
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ChildStart(_Model):
    """An intent.run start's answer: the child's id and orchestration input, or the verdict when it cannot start."""

    execution_id: str | None = None
    input: dict[str, Json] | None = None
    verdict: Verdict | None = None


class DispatchAnswer(_Model):
    status: Status
    cancel_requested: bool = False
    refused: bool = False
    children: dict[str, ChildStart] = Field(default_factory=dict)
    results: dict[str, Verdict] = Field(default_factory=dict)
    """Results of built-in attempts recorded while the dispatch waited, by attempt event name (ADR 0034): their
    events are not raised."""
    then: list[Carried] = Field(default_factory=list)
    """The levels this dispatch carried on to, in order (ADR 0036); empty on a carried level's own answer."""


class Carried(_Model):
    """A level a dispatch carried on to: the dispatch the reducer asks for next (its activity id and its batch's
    digest) and that dispatch's answer."""

    id: str
    batch_sha256: str
    answer: DispatchAnswer


DispatchAnswer.model_rebuild()


class Outcome(_Model):
    """An outcome the engine observed (timeout, a wait's end, a child's end) to record for one attempt."""

    step_id: str
    phase: Phase
    attempt: int
    ok: bool
    output: Json = None
    error: str | None = None
    state: str | None = None
    action: str | None = None
    """The attempt's action, for an outcome of an attempt whose start may not be recorded (its dispatch failed)."""


class RecordOutcomes(_Model):
    """`record_outcomes`: apply each outcome unless another was applied first; answers the verdicts, in order."""

    execution_id: str
    tenant_id: str
    outcomes: list[Outcome]
    status: Status | None = None
    cancel_first: bool = False
    """Asked by runs under rules 7: a run attempt's failure recorded while a cancel is recorded is answered saying so
    (`Verdict.cancel_first`); a run under earlier rules, which would not read it, is answered as before."""


class RecordStatus(_Model):
    """`record_status`: move the execution (through `running` when it ends while waiting)."""

    execution_id: str
    tenant_id: str
    status: Status
    output: Json = None
    error: str | None = None


class StatusAnswer(_Model):
    status: Status
    cancel_requested: bool = False


class LoadOutput(_Model):
    """`load_output`: the parts of a stored output at `paths` (read from the tenant's prefix only)."""

    tenant_id: str
    output: Json
    paths: list[list[str]]
    child: bool = True
    """Whether the output is a child execution's, whose `outputs` may hold its steps' stored outputs (absent from
    inputs recorded before this field, which read it so)."""


class CancelChild(_Model):
    """`cancel_child`: record the parent's cancel on the child execution, then raise it to its orchestration."""

    tenant_id: str
    execution_id: str
    child_execution_id: str


# ------------------------------------------------------------------------------------------------ events
@dataclass(frozen=True)
class ActivityDone:
    id: str
    result: Json
    now: datetime


@dataclass(frozen=True)
class ActivityFailed:
    id: str
    error: str
    now: datetime


@dataclass(frozen=True)
class EventRaised:
    """An external event: an attempt's result (`run:<step>:<attempt>`, `compensate:...`) or `cancel`."""

    name: str
    data: Json
    now: datetime


@dataclass(frozen=True)
class TimerFired:
    now: datetime


@dataclass(frozen=True)
class ChildEnded:
    step_id: str
    attempt: int
    result: Json
    failed: bool
    now: datetime


Event = ActivityDone | ActivityFailed | EventRaised | TimerFired | ChildEnded


# ------------------------------------------------------------------------------------------------ commands
@dataclass(frozen=True)
class CallActivity:
    id: str
    name: Activity
    input: _Model


@dataclass(frozen=True)
class WaitForEvent:
    name: str


@dataclass(frozen=True)
class SetTimer:
    """The one durable timer: fire at `at` (the earliest deadline); a previous timer is dropped."""

    at: datetime


@dataclass(frozen=True)
class StartChild:
    step_id: str
    attempt: int
    instance_id: str
    input: dict[str, Json]


@dataclass(frozen=True)
class ContinueAsNew:
    input: dict[str, Json]


@dataclass(frozen=True)
class Complete:
    result: dict[str, Json]


Command = CallActivity | WaitForEvent | SetTimer | StartChild | ContinueAsNew | Complete


# ------------------------------------------------------------------------------------------------ state
RULES = 11
"""The reducer rules new executions start under (ADR 0025). 3 (2026-12-05): a child whose step times out is told to
cancel; reused steps are compensated dependents first. 4 (2026-12-05): the attempts of a dispatch that failed for
good are settled through `record_outcomes` (their recorded result, else failed) instead of being retried blind; a
step's parameters come to at most 2 Mi characters once resolved, counted as JSON text (`MAX_RESOLVED_CHARS`); a
retry waits at most 30 days (`MAX_TIMEOUT_S`); a child's step outputs stored as blobs are read where the parent's
references lead (`load_output`, at most 8 MiB per reference). 5 (2026-12-06, ADR 0014): a compensation attempt that
failed with another due is recorded as retrying (`compensation_retrying`) before its pause counts, as a run-phase
retry is; a child that ends cancelled because its stopping parent told it to ends its step cancelled (its attempt
abandoned), not failed. 6 (2026-12-06, ADR 0014): the parameters one dispatch starts come to at most 8 Mi characters
once resolved, added up over its starts (`MAX_LEVEL_RESOLVED_CHARS`): the step that would pass it fails as a step
past `MAX_RESOLVED_CHARS` does; an attempt under way no longer keeps its parameters (`Flight.params`, read by
nothing, copied every resolved value into the state). 7 (2026-12-06, ADR 0014): a run attempt's failure whose verdict
says a cancel was recorded first (`Verdict.cancel_first`) is applied as a failure during that cancel, even when it
reaches the orchestration before the cancel's event: the run ends cancelled, as the cancel's 202 said, and the
cancel's event then changes nothing. 8 (2026-12-06, ADR 0014): a failure the run decides itself is recorded before
it is applied, by a transaction that reads the cancel: a stored output that could not be read fails the first step
that reads it (a `failed` note; the dispatch's answer says whether a cancel was recorded first; meanwhile no attempt
or retry starts and another output that cannot be read changes nothing), a child that did not start and the attempts
of a `record_outcomes` that failed for good are settled failed through `record_outcomes`. A cancel after such a record
is refused (it reads `failed_for_good`), one before it ends the run cancelled; so does one a dispatch reads as it
records a step failed before it started (its parameters), though the reducer had made that failure the cause before
the answer. 9 (2026-12-06, ADR 0025): a stopping run records no step as retrying: a retry decided in the reduction
that stops the run (an earlier verdict of the same answer) ends with the run's other waits, in the same dispatch,
without its `retrying` note; a compensation given up before it began (its parameters cannot resolve) is recorded on
its step as a compensation that will not finish is (a `compensation_failed` note), and the run ends only once that
record is answered. 10 (2026-12-07, ADR 0047): an attempt's timeout counts from its recorded start (the answer of the
dispatch that records it), not from the reduction that decided to start it. 11 (2026-12-07, ADR 0014): an
`intent.run` attempt that times out tells its child to cancel and ends when the child does (`Stage.STOPPING`): a child
that succeeded meanwhile is the step's success, anything else its timeout, retried only after the child ended; a
`wait` whose time resolves past its step's timeout fails as it starts, naming the bound, instead of timing out. An
execution keeps the rules it started with, so that its history replays into the commands it recorded."""

MAX_LEVEL_RESOLVED_CHARS = 8 * 1024 * 1024
"""What the parameters of the steps one dispatch starts may come to once resolved, added up, counted as JSON text
(rules 6): each step's own bound (2 Mi) let a level of 200 steps referencing one 900 KB input send a 400 MB dispatch
input, which the Durable history keeps. Four steps at their own bound fit."""


class Spec(_Model):
    """What does not change while an execution runs."""

    execution_id: str
    tenant_id: str
    definition: Definition
    inputs: dict[str, Json] = Field(default_factory=dict)
    plans: dict[str, StepPlan] = Field(default_factory=dict)
    intent_id: str | None = None
    intent_version: int | None = None
    traceparent: str | None = None  # the trace every activity of the execution continues (W3C)
    rules: int = 2  # RULES when the execution started; 2 for one that started before rules were recorded

    @functools.cached_property
    def steps(self) -> dict[str, Step]:
        return {step.step_id: step for step in self.definition.steps or []}

    @functools.cached_property
    def graph(self) -> StepGraph:
        return StepGraph.from_steps(self.definition.steps or [])

    @functools.cached_property
    def output_paths(self) -> dict[str, frozenset[tuple[str, ...]]]:
        return referenced_output_paths(self.definition.steps or [])

    @functools.cached_property
    def readers(self) -> dict[str, tuple[str, ...]]:
        return output_readers(self.definition.steps or [])

    def plan(self, step_id: str) -> StepPlan:
        return self.plans.get(step_id) or StepPlan(kind="module", timeout_s=self.steps[step_id].timeout_s)

    def policy(self, step_id: str) -> RetryPolicy:
        return self.steps[step_id].retry or _ONE_ATTEMPT


class Flight(_Model):
    """One attempt under way (of a step's work, or of its compensation)."""

    step_id: str
    phase: Phase = Phase.RUN
    attempt: int
    kind: StepKind
    stage: Stage
    params: dict[str, Json] = Field(default_factory=dict)
    """Kept only by executions started before rules 6, so their state replays as it was; nothing reads it."""
    deadline: datetime | None = None  # the attempt times out then
    ends_at: datetime | None = None  # a wait ends, or a retry pause ends, then
    write: str | None = None  # the activity that records its start (or its retry) and is not answered yet
    early: Verdict | None = None  # a result that came before its start was recorded
    child_execution_id: str | None = None
    error: str | None = None  # the error a retry pause follows, or the timeout a stopping child's attempt ends by


class Pending(_Model):
    """An activity the orchestrator called and that has not answered."""

    name: Activity
    steps: tuple[str, ...] = ()
    status: Status | None = None
    finish: bool = False
    """A dispatch that may record the run's success with its results (DispatchSteps.finish)."""
    carrying: bool = False
    """A dispatch that may carry on to the levels after its own (ADR 0036): events wait for its answer."""
    failure: tuple[str, str] | None = None
    """A dispatch that records a failure the run decided itself (rules 8: a stored output that could not be read),
    as (step, error): applied once its answer says whether a cancel was recorded first."""
    cause: str | None = None
    """The step whose failure before it started (a `failed` note of this dispatch) became the run's cause (rules 8):
    if the answer says a cancel was recorded first, the cancel is the cause instead."""
    final_record: bool = False
    """A record of the failures a `record_outcomes` that failed for good left (rules 8): if it fails too, they are
    applied unrecorded, as before."""
    child: str | None = None
    """A `cancel_child`'s child execution (rules 11): if it fails for good while its attempt still waits for that
    child, the cancel is issued again after CANCEL_CHILD_AGAIN_S. None under earlier rules, which issue it once."""


class Deferred(_Model):
    """An event that came while a carrying dispatch was out, applied once its answer is (ADR 0036)."""

    name: str | None = None  # None: the timer fired
    data: Json = None
    now: datetime

    def event(self) -> EventRaised | TimerFired:
        return TimerFired(self.now) if self.name is None else EventRaised(self.name, self.data, self.now)


class State(_Model):
    spec: Spec
    phase: RunPhase = RunPhase.RUNNING
    started: bool = False  # the execution's move to running is recorded
    recorded: Status = Status.PENDING
    completed: dict[str, Json] = Field(default_factory=dict)
    order: tuple[str, ...] = ()  # completion order, for compensation
    loaded: dict[str, Json] = Field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    failed: dict[str, str] = Field(default_factory=dict)
    first_failure: str | None = None
    cancelled: bool = False
    flights: dict[str, Flight] = Field(default_factory=dict)
    pending: dict[str, Pending] = Field(default_factory=dict)
    views: dict[str, dict[str, Json]] = Field(default_factory=dict)
    seq: int = 0
    generation: int = 0
    settled: int = 0  # attempts settled in this generation
    timer_at: datetime | None = None
    to_compensate: tuple[str, ...] | None = None
    compensated: tuple[str, ...] = ()
    compensation_failed: dict[str, str] = Field(default_factory=dict)
    deferred: tuple[Deferred, ...] = ()

    @property
    def stopping(self) -> bool:
        return self.first_failure is not None or self.cancelled

    def run_state(self) -> RunState:
        readable = {step_id: self.loaded.get(step_id, output) for step_id, output in self.completed.items()}
        running = frozenset(step_id for step_id, f in self.flights.items() if f.phase is Phase.RUN)
        return RunState(readable, frozenset(self.skipped), frozenset(self.failed), running)

    def custom_status(self) -> dict[str, Json]:
        """The orchestration's own view, beside what Postgres records."""
        if self.phase is RunPhase.ENDED:
            status = "succeeded" if not self.stopping else ("cancelled" if self.cancelled else "failed")
        else:
            status = self.phase.value
        return {"status": status, "steps": self.views}
