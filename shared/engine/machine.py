# intent_ref: platform.execution
"""The execution state machine as a pure reducer: `reduce(state, event) -> (state, commands)`, no I/O, no clock."""

# Everything that decides how an execution runs lives here: DAG levels, `when`, references (with the referenced
# parts of stored outputs loaded first), retries with backoff, timeouts, approvals, waits, child intents, cancel,
# compensation in reverse completion order, reused outputs, and the order in which statuses are recorded. The
# orchestrator only turns commands into durable tasks and finished tasks into events, so replaying the same events
# gives the same commands. Times come in on the events (the orchestration's replay-safe clock).

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import chain
from typing import Any

from shared.engine.graph import compensation_order, next_steps
from shared.engine.machine_types import (
    MAX_LEVEL_RESOLVED_CHARS,
    RULES,
    TERMINAL,
    Activity,
    ActivityDone,
    ActivityFailed,
    CallActivity,
    CancelChild,
    Carried,
    Carry,
    ChildEnded,
    ChildStart,
    Command,
    Complete,
    ContinueAsNew,
    Deferred,
    DispatchAnswer,
    DispatchSteps,
    Event,
    EventRaised,
    Flight,
    Json,
    LoadOutput,
    NoteKind,
    Outcome,
    Pending,
    Phase,
    RecordOutcomes,
    RecordStatus,
    RunPhase,
    SetTimer,
    Spec,
    Stage,
    StartChild,
    State,
    Status,
    StatusAnswer,
    StepKind,
    StepNote,
    StepStart,
    TimerFired,
    Verdict,
    WaitForEvent,
    _Model,
)
from shared.engine.payloads import is_blob_ref
from shared.engine.protocol import CANCEL_EVENT, StepPlan, attempt_event
from shared.registry.model import MAX_TIMEOUT_S, Definition, RetryPolicy
from shared.registry.plan import execution_levels
from shared.registry.references import (
    MAX_RESOLVED_CHARS,
    ReferenceSyntaxError,
    ResolvedTooLargeError,
    UnresolvedReferenceError,
    json_length,
    resolve,
)

__all__ = [  # the types are defined in machine_types and named here, as machine.X, by their users
    "Activity",
    "ActivityDone",
    "ActivityFailed",
    "begin",
    "CallActivity",
    "CancelChild",
    "Carried",
    "carried_on",
    "carry",
    "Carry",
    "CARRY_MAX_BYTES",
    "ChildEnded",
    "ChildStart",
    "Command",
    "Complete",
    "CONTINUE_AFTER_STEPS",
    "ContinueAsNew",
    "Deferred",
    "DispatchAnswer",
    "DispatchSteps",
    "Event",
    "EventRaised",
    "Flight",
    "Json",
    "LoadOutput",
    "MAX_LEVEL_RESOLVED_CHARS",
    "NoteKind",
    "Outcome",
    "Pending",
    "Phase",
    "RecordOutcomes",
    "RecordStatus",
    "reduce",
    "RunPhase",
    "SetTimer",
    "RULES",
    "Spec",
    "Stage",
    "StartChild",
    "State",
    "Status",
    "StatusAnswer",
    "StepKind",
    "StepNote",
    "StepStart",
    "TERMINAL",
    "TimerFired",
    "Verdict",
    "WaitForEvent",
]

CONTINUE_AFTER_STEPS = 8
"""Settled attempts after which a quiescent run continues as new, so no generation replays a long history."""

CANCEL_CHILD_AGAIN_S = 300
"""Rules 11: after a `cancel_child` failed for good, the wait before it is issued again to a child an attempt still
waits for (and again after each one that fails): a child that never heard its cancel ends only by itself."""


# ------------------------------------------------------------------------------------------------ the reducer
class _Step:
    """A mutable working copy of the state for one reduction; frozen again before it is returned."""

    def __init__(self, state: State) -> None:
        self.s = state
        self.commands: list[Command] = []
        self.notes: list[StepNote] = []
        self.starts: list[StepStart] = []
        self.waits: list[str] = []
        self.starts_chars = 0  # the resolved parameters of `starts`, as JSON text (rules 6)
        self.failure: tuple[str, str] | None = None  # decided here, recorded by the next dispatch (rules 8)

    # -- helpers
    def update(self, **changes: Any) -> None:
        self.s = self.s.model_copy(update=changes)

    def put_flight(self, flight: Flight) -> None:
        self.update(flights={**self.s.flights, flight.step_id: flight})

    def drop_flight(self, step_id: str) -> None:
        self.update(flights={k: v for k, v in self.s.flights.items() if k != step_id})

    def view(self, step_id: str, value: dict[str, Json]) -> None:
        self.update(views={**self.s.views, step_id: value})

    def next_id(self) -> str:
        self.update(seq=self.s.seq + 1)
        return f"{self.s.generation}.{self.s.seq}"

    def call(
        self,
        name: Activity,
        model: _Model,
        steps: Sequence[str] = (),
        status: Status | None = None,
        finish: bool = False,
        carrying: bool = False,
        failure: tuple[str, str] | None = None,
        cause: str | None = None,
        final_record: bool = False,
        child: str | None = None,
    ) -> str:
        activity_id = self.next_id()
        self.commands.append(CallActivity(activity_id, name, model))
        pending = Pending(
            name=name,
            steps=tuple(steps),
            status=status,
            finish=finish,
            carrying=carrying,
            failure=failure,
            cause=cause,
            final_record=final_record,
            child=child,
        )
        self.update(pending={**self.s.pending, activity_id: pending})
        return activity_id

    @property
    def status_busy(self) -> bool:
        return any(p.status is not None for p in self.s.pending.values())

    @property
    def recording_failure(self) -> bool:
        """A failure the run decided itself is being recorded (rules 8): nothing starts until it is applied, and once
        applied the run stops. Never so under earlier rules, which decide no such record."""
        return self.failure is not None or any(p.failure is not None for p in self.s.pending.values())

    # -- run phase
    def fail_step(self, step_id: str, error: str, attempt: int) -> None:
        """A step's final failure: the first one is the execution's cause, and nothing new starts after it."""
        self.update(failed={**self.s.failed, step_id: error})
        self.view(step_id, {"state": "failed", "attempt": attempt, "error": error})
        if not self.s.stopping:
            self.update(first_failure=step_id)
            self.abandon_waits()

    def succeed(self, flight: Flight, output: Json) -> None:
        self.drop_flight(flight.step_id)
        self.update(completed={**self.s.completed, flight.step_id: output}, order=(*self.s.order, flight.step_id))
        self.view(flight.step_id, {"state": "succeeded", "attempt": flight.attempt})

    def retry_delay(self, policy: RetryPolicy, attempt: int) -> float:
        """The wait before `attempt`, at most MAX_TIMEOUT_S (rules 4): a policy without a cap grew past any date a
        timer can name, and the reducer raised OverflowError."""
        delay = policy.delay_before(attempt)
        return min(delay, MAX_TIMEOUT_S) if self.s.spec.rules >= 4 else delay

    def resolved_bound(self) -> int | None:
        """What a step's parameters may come to once resolved (rules 4); unbounded for executions started before."""
        return MAX_RESOLVED_CHARS if self.s.spec.rules >= 4 else None

    def resolve_params(self, params: dict[str, Json]) -> dict[str, Json]:
        """`params` resolved for a start of this reduction's dispatch: at most MAX_RESOLVED_CHARS alone (rules 4) and,
        added up over the dispatch's starts, at most MAX_LEVEL_RESOLVED_CHARS (rules 6), else ResolvedTooLargeError.

        The dispatch's starts are its activity input, which the Durable history keeps: 200 steps each within their own
        bound made one input of 400 MB."""
        spec = self.s.spec
        outputs = self.s.run_state().outputs()
        if spec.rules < 6:
            resolved: dict[str, Json] = resolve(params, spec.inputs, outputs, max_chars=self.resolved_bound())
            return resolved
        left = MAX_LEVEL_RESOLVED_CHARS - self.starts_chars
        too_many = (
            f"the parameters of the steps starting together come to more than {MAX_LEVEL_RESOLVED_CHARS} characters"
            " once resolved"
        )
        try:
            # Bounded by what the dispatch has left as well, so a step past it fails before it is built whole.
            resolved = resolve(params, spec.inputs, outputs, max_chars=min(MAX_RESOLVED_CHARS, left))
        except ResolvedTooLargeError:
            if left >= MAX_RESOLVED_CHARS:
                raise  # past its own bound, as before rules 6
            # Past what the dispatch has left: blamed on the dispatch only when the step alone is within its own
            # bound (a step past it fails for itself whatever its siblings, and splitting the level would not help).
            resolve(params, spec.inputs, outputs, max_chars=MAX_RESOLVED_CHARS)
            raise ResolvedTooLargeError(too_many) from None
        # The whole JSON text, keys included (the bound above counts the referenced values and the text around them).
        size = json_length(resolved)
        if size > left:
            raise ResolvedTooLargeError(too_many)
        self.starts_chars += size
        return resolved

    def start_attempt(self, step_id: str, attempt: int, now: datetime) -> None:
        """Resolve parameters against what is known now and start the attempt (recorded by the next dispatch)."""
        spec = self.s.spec
        step = spec.steps[step_id]
        plan = spec.plan(step_id)
        self.drop_flight(step_id)
        kind = StepKind(plan.kind)
        try:
            params = self.resolve_params(step.params)
            ends_at = _wait_until(now, params) if kind is StepKind.WAIT else None
            if ends_at is not None and plan.timeout_s is not None and spec.rules >= 11:
                _within_timeout(now, ends_at, params, plan.timeout_s)
        except (UnresolvedReferenceError, ReferenceSyntaxError, ResolvedTooLargeError, _WaitError) as exc:
            # Retrying cannot help: the same outputs resolve the same way on every attempt.
            error = (
                str(exc)
                if isinstance(exc, _WaitError | ResolvedTooLargeError)
                else f"parameters could not be resolved: {exc}"
            )
            self.notes.append(StepNote(kind=NoteKind.FAILED, step_id=step_id, attempt=attempt, error=error))
            self.fail_step(step_id, error, attempt)
            return
        deadline = now + timedelta(seconds=plan.timeout_s) if plan.timeout_s is not None else None
        self.starts.append(
            StepStart(
                step_id=step_id,
                phase=Phase.RUN,
                attempt=attempt,
                kind=kind,
                action=step.action,
                params=params,
                remote=plan.remote,
                timeout_s=plan.timeout_s,
            )
        )
        if kind in (StepKind.MODULE, StepKind.APPROVAL):
            self.waits.append(attempt_event(Phase.RUN, step_id, attempt))
        self.put_flight(
            Flight(
                step_id=step_id,
                attempt=attempt,
                kind=kind,
                stage=Stage.STARTING,
                # Rules 6: not kept, nothing reads it and the start carries it; every resolved value sat in the state,
                # the continue-as-new input and the replay memo beside the dispatch's input.
                params=params if spec.rules < 6 else {},
                deadline=deadline,
                ends_at=ends_at,
            )
        )
        self.view(
            step_id,
            {
                "state": "waiting" if kind is StepKind.APPROVAL else "running",
                "attempt": attempt,
                "max_attempts": spec.policy(step_id).max_attempts,
            },
        )

    def attempt_failed(self, flight: Flight, error: str, retryable: bool, now: datetime) -> None:
        """Retry after the policy's backoff, unless attempts are spent or the run is stopping."""
        if flight.phase is Phase.COMPENSATE:
            self.compensation_attempt_failed(flight, error, now)
            return
        policy = self.s.spec.policy(flight.step_id)
        if not retryable or flight.attempt >= policy.max_attempts or self.s.stopping:
            self.drop_flight(flight.step_id)
            self.fail_step(flight.step_id, error, flight.attempt)
            return
        retry_at = now + timedelta(seconds=self.retry_delay(policy, flight.attempt + 1))
        self.notes.append(
            StepNote(
                kind=NoteKind.RETRYING,
                step_id=flight.step_id,
                attempt=flight.attempt,
                next_attempt=flight.attempt + 1,
                max_attempts=policy.max_attempts,
                retry_at=retry_at.isoformat(),
                error=error,
            )
        )
        self.put_flight(
            flight.model_copy(
                update={
                    "stage": Stage.PAUSED,
                    "deadline": None,
                    "ends_at": retry_at,
                    "error": error,
                    "early": None,
                    "write": "",  # filled with the dispatch that records the retry
                }
            )
        )
        self.view(
            flight.step_id,
            {
                "state": "retrying",
                "attempt": flight.attempt,
                "max_attempts": policy.max_attempts,
                "next_attempt": flight.attempt + 1,
                "retry_at": retry_at.isoformat(),
                "error": error,
            },
        )

    def apply(self, flight: Flight, verdict: Verdict, now: datetime) -> None:
        self.update(settled=self.s.settled + 1)
        if verdict.cancel_first and not verdict.ok and flight.phase is Phase.RUN and self.s.spec.rules >= 7:
            # Recorded after a cancel answered 202 ("ends cancelled") whose event has not come yet: applied as if it
            # had, so the cancel is the cause and this a failure during it (the cancel's event then changes nothing).
            # This attempt's own verdict is applied below, as it was recorded.
            self.cancel(keep=flight.step_id)
        if flight.phase is Phase.RUN and verdict.state == "abandoned" and self.s.stopping:
            # Ended by the stop (its queued work cancelled, a child told to cancel): cancelled, as a wait the stop
            # ends, not failed. Commands are the same either way: a stopping run starts nothing after a failure.
            self.drop_flight(flight.step_id)
            self.update(failed={**self.s.failed, flight.step_id: verdict.error or "abandoned"})
            self.view(flight.step_id, {"state": "cancelled", "attempt": flight.attempt, "error": verdict.error})
            return
        if flight.phase is Phase.COMPENSATE:
            if verdict.ok:
                self.compensation_done(flight.step_id, None)
            else:
                self.attempt_failed(flight, verdict.error or "failed", verdict.retryable, now)
        elif verdict.ok:
            self.succeed(flight, verdict.output)
        else:
            self.attempt_failed(flight, verdict.error or verdict.state or "failed", verdict.retryable, now)

    def settle(self, flights: Sequence[tuple[Flight, Outcome]], final_record: bool = False) -> None:
        """Record outcomes the engine observed; each flight waits for the verdict applied first."""
        if not flights:
            return
        spec = self.s.spec
        activity_id = self.call(
            Activity.RECORD_OUTCOMES,
            RecordOutcomes(
                execution_id=spec.execution_id,
                tenant_id=spec.tenant_id,
                outcomes=[outcome for _, outcome in flights],
                cancel_first=spec.rules >= 7,
            ),
            steps=[flight.step_id for flight, _ in flights],
            final_record=final_record,
        )
        for flight, _ in flights:
            self.put_flight(flight.model_copy(update={"stage": Stage.SETTLING, "deadline": None, "write": activity_id}))

    def cancel_child(self, child_execution_id: str) -> None:
        spec = self.s.spec
        self.call(
            Activity.CANCEL_CHILD,
            CancelChild(
                tenant_id=spec.tenant_id, execution_id=spec.execution_id, child_execution_id=child_execution_id
            ),
            child=child_execution_id if spec.rules >= 11 else None,
        )

    def cancel_child_failed(self, child_execution_id: str, now: datetime) -> None:
        """Rules 11: a `cancel_child` failed for good (its retries spanned a longer outage) while an attempt still
        waits for that child, which may never have heard it: a timed-out attempt (STOPPING) or a stopping run's child
        would wait for the child's natural end. The cancel is issued again after CANCEL_CHILD_AGAIN_S (`due`), every
        CANCEL_CHILD_AGAIN_S for as long as the attempt waits for it; the child records a cancel once."""
        for flight in self.s.flights.values():
            if flight.child_execution_id != child_execution_id or flight.phase is not Phase.RUN:
                continue
            if flight.stage is Stage.STOPPING or (flight.stage is Stage.CHILD and self.s.stopping):
                again = now + timedelta(seconds=CANCEL_CHILD_AGAIN_S)
                self.put_flight(flight.model_copy(update={"ends_at": again}))

    def abandon_waits(self, keep: str | None = None) -> None:
        """Steps that only wait (a retry pause, an approval, a wait) end now: a stopping run starts no work.

        A running child is told to cancel (it compensates its own steps); its step ends when the child does.
        An attempt whose start is not recorded yet is abandoned once it is (its outcome follows its start).
        `keep`: the step whose verdict is being applied, which ends by that verdict.
        """
        reason = "cancelled" if self.s.cancelled else "an earlier step failed"
        for flight in list(self.s.flights.values()):
            if flight.phase is not Phase.RUN or flight.step_id == keep:
                continue
            if flight.stage is Stage.CHILD and flight.child_execution_id is not None:
                self.cancel_child(flight.child_execution_id)
                continue
            waits_only = flight.stage is Stage.PAUSED or (
                flight.stage is Stage.RUNNING and flight.kind in (StepKind.APPROVAL, StepKind.WAIT)
            )
            if not waits_only:
                continue
            if flight.write == "" and flight.stage is Stage.PAUSED and self.s.spec.rules >= 9:
                # A retry decided in this very reduction (an earlier verdict of the same answer), not recorded yet:
                # it ends here with the other waits, and its `retrying` note is not sent (rules 9). Passed over, the
                # note went out with this reduction's dispatch, so a run already stopping recorded the step retrying,
                # and only the dispatch after it ended the step; runs under earlier rules keep that, as recorded.
                self.notes = [
                    note
                    for note in self.notes
                    if not (note.kind is NoteKind.RETRYING and note.step_id == flight.step_id)
                ]
            elif flight.write is not None:
                continue
            self.drop_flight(flight.step_id)
            self.update(failed={**self.s.failed, flight.step_id: flight.error or "abandoned"})
            self.view(flight.step_id, {"state": "cancelled", "attempt": flight.attempt, "error": flight.error})
            self.notes.append(
                StepNote(kind=NoteKind.ABANDONED, step_id=flight.step_id, attempt=flight.attempt, error=reason)
            )

    def cancel(self, keep: str | None = None) -> None:
        if self.s.stopping or self.s.phase is not RunPhase.RUNNING:
            return  # a failure stays the cause (or the cancel was applied already); compensation happens anyway
        self.update(cancelled=True)
        self.abandon_waits(keep)

    def first_reader(self, step_id: str) -> str | None:
        """The first step, in definition order, whose parameters or `when` read `step_id`'s output and that has not
        started (nor been skipped or failed): the step a stored output that cannot be read fails (rules 8)."""
        done = {*self.s.completed, *self.s.skipped, *self.s.failed, *self.s.flights}
        return next((reader for reader in self.s.spec.readers.get(step_id, ()) if reader not in done), None)

    # -- events
    def on_dispatched(self, activity_id: str, pending: Pending, answer: DispatchAnswer, now: datetime) -> None:
        if answer.cancel_requested and pending.cause is not None and self.s.first_failure == pending.cause:
            # Rules 8: the step failed before it started, recorded by this dispatch after a cancel it read (a cancel
            # after it is refused): the cancel came first and is the cause, that failure one during it.
            self.update(first_failure=None)
        if pending.finish and answer.status is Status.SUCCEEDED:
            # The dispatch recorded the run's success with this level's results: a cancel that met it (seen
            # before this answer, or reported by it) came too late to stop anything.
            self.update(recorded=Status.SUCCEEDED, cancelled=False)
        elif answer.cancel_requested:
            self.cancel()
        if not self.s.started:
            self.update(started=True)
            if answer.refused and answer.status in TERMINAL:
                # Ended before it started (swept, or cancelled while pending): nothing was recorded by this run.
                self.update(phase=RunPhase.ENDED, flights={})
                self.commands.append(
                    Complete(
                        {
                            "status": answer.status.value,
                            "failed_step": None,
                            "error": "ended before it started",
                            "compensated": [],
                            "compensation_failed": {},
                        }
                    )
                )
                return
        if pending.status is not None:
            self.update(recorded=answer.status)
        if pending.failure is not None:
            # Recorded by this dispatch (rules 8): after a cancel it reported above, a failure during that cancel.
            self.fail_step(*pending.failure, attempt=1)
        for step_id in pending.steps:
            flight = self.s.flights.get(step_id)
            if flight is None or flight.write != activity_id:
                continue
            if flight.stage is Stage.PAUSED:
                self.put_flight(flight.model_copy(update={"write": None}))
                continue
            if answer.refused and flight.phase is Phase.RUN:
                self.drop_flight(step_id)  # never started: it stays pending
                self.view(step_id, {"state": "pending"})
                continue
            child = answer.children.get(step_id)
            if flight.kind is StepKind.INTENT and flight.phase is Phase.RUN:
                if child is None or child.verdict is not None or child.execution_id is None:
                    started = flight.model_copy(update={"write": None})
                    if (child is None or child.verdict is None) and self.s.spec.rules >= 8:
                        # Decided here, so recorded first (rules 8): record_outcomes reads the cancel as it records
                        # the failure, which a cancel after it then reads (`failed_for_good`).
                        self.settle([(started, self.unstarted_outcome(started, "child did not start"))])
                        continue
                    verdict = (child.verdict if child else None) or Verdict(ok=False, error="child did not start")
                    self.apply(started, verdict, now)
                    continue
                self.commands.append(StartChild(step_id, flight.attempt, child.execution_id, dict(child.input or {})))
                flight = flight.model_copy(
                    update={
                        "stage": Stage.CHILD,
                        "write": None,
                        "child_execution_id": child.execution_id,
                        "deadline": self.deadline_from_start(flight, now),
                    }
                )
                self.put_flight(flight)
                self.view(step_id, {**self.s.views.get(step_id, {}), "child_execution_id": child.execution_id})
                if self.s.stopping:  # the run stopped while the child was recorded: it starts only to end
                    self.cancel_child(child.execution_id)
                continue
            early = flight.early or answer.results.get(attempt_event(flight.phase, step_id, flight.attempt))
            flight = flight.model_copy(
                update={
                    "stage": Stage.RUNNING,
                    "write": None,
                    "early": None,
                    "deadline": self.deadline_from_start(flight, now),
                }
            )
            self.put_flight(flight)
            if early is not None:
                self.apply(flight, early, now)
        if self.s.stopping:
            self.abandon_waits()
        self.due(now)

    def deadline_from_start(self, flight: Flight, now: datetime) -> datetime | None:
        """When an attempt whose start was just recorded times out. Under rules 10 its timeout counts from that record
        (the dispatch's answer), not from the reduction that decided to start it: the time its dispatch waited in the
        task hub behind other executions' work is not the step's own (a 30 s step timed out before it ran)."""
        if self.s.spec.rules < 10 or flight.deadline is None:
            return flight.deadline
        plan = self.s.spec.plan(flight.step_id)
        timeout_s = plan.timeout_s if flight.phase is Phase.RUN else _compensate_timeout(plan)
        return now + timedelta(seconds=timeout_s) if timeout_s is not None else None

    def on_dispatch_failed(self, activity_id: str, pending: Pending, error: str, now: datetime) -> None:
        self.update(started=True)
        if pending.failure is not None:
            self.fail_step(*pending.failure, attempt=1)  # not recorded after all: applied as before rules 8
        unsure: list[tuple[Flight, Outcome]] = []
        for step_id in pending.steps:
            flight = self.s.flights.get(step_id)
            if flight is None or flight.write != activity_id:
                continue
            why = f"could not start: {error}"
            if flight.phase is Phase.COMPENSATE:
                why = f"compensation of {step_id} could not start: {error}"
            if flight.stage is Stage.PAUSED:
                self.put_flight(flight.model_copy(update={"write": None}))
            elif self.s.spec.rules >= 4:
                # A dispatch that failed for good may have committed its starts and published their work before
                # it failed: each attempt is ended as failed unless it has a result, and that verdict decides.
                unsure.append((flight, self.unstarted_outcome(flight, why)))
            else:
                self.attempt_failed(flight, why, True, now)
        self.settle(unsure)
        if self.s.stopping and self.s.spec.rules >= 8:
            # A retry whose record was out as the run began stopping was passed over by abandon_waits; ended now, as a
            # dispatch's answer ends it, or the next timer started that retry in a cancelled or failed run. Runs under
            # earlier rules keep it, so their histories replay into the commands they recorded.
            self.abandon_waits()

    def unstarted_outcome(self, flight: Flight, error: str) -> Outcome:
        """The outcome of an attempt whose dispatch failed: failed, naming its action for a start never recorded."""
        step = self.s.spec.steps[flight.step_id]
        compensation = step.compensate
        action = compensation.action if flight.phase is Phase.COMPENSATE and compensation is not None else step.action
        return Outcome(
            step_id=flight.step_id,
            phase=flight.phase,
            attempt=flight.attempt,
            ok=False,
            state="failed",
            error=error,
            action=action,
        )

    def on_result(self, name: str, data: Json, now: datetime) -> None:
        if name == CANCEL_EVENT:
            self.cancel()
            return
        phase, _, rest = name.partition(":")
        step_id, _, attempt = rest.rpartition(":")
        flight = self.s.flights.get(step_id)
        if flight is None or flight.phase.value != phase or str(flight.attempt) != attempt:
            return  # a late result of an attempt that is over (timed out, abandoned): it counts for nothing
        if flight.kind not in (StepKind.MODULE, StepKind.APPROVAL) and flight.phase is Phase.RUN:
            return
        verdict = _verdict(data)
        if flight.stage is Stage.STARTING:
            # A result can overtake the answer of the dispatch that recorded its start; it waits for it.
            self.put_flight(flight.model_copy(update={"early": verdict}))
        elif flight.stage is Stage.RUNNING:
            self.apply(flight, verdict, now)

    def on_child_ended(self, event: ChildEnded) -> None:
        flight = self.s.flights.get(event.step_id)
        if flight is None or flight.attempt != event.attempt or flight.stage not in (Stage.CHILD, Stage.STOPPING):
            return
        child_id = flight.child_execution_id
        result = _object(event.result)
        if flight.stage is Stage.STOPPING and (event.failed or result.get("status") != "succeeded"):
            # Timed out, its child told to cancel (rules 11): the child has ended without succeeding (cancelled as
            # told, or failed), so the timeout stands, and only now may a retry start another child.
            outcome = Outcome(
                step_id=flight.step_id,
                phase=Phase.RUN,
                attempt=flight.attempt,
                ok=False,
                state="timed_out",
                error=flight.error or f"step {flight.step_id} timed out",
            )
        elif event.failed:
            outcome = Outcome(
                step_id=flight.step_id,
                phase=Phase.RUN,
                attempt=flight.attempt,
                ok=False,
                error=f"child execution {child_id} failed: {event.result}",
            )
        elif result.get("status") == "succeeded":
            outcome = Outcome(
                step_id=flight.step_id,
                phase=Phase.RUN,
                attempt=flight.attempt,
                ok=True,
                output={"execution_id": child_id, "outputs": result.get("outputs")},
            )
        elif result.get("status") == "cancelled" and self.s.stopping and self.s.spec.rules >= 5:
            # A stopping run tells a running child to cancel (abandon_waits): the child ending cancelled is that stop
            # carried out, so its step ends as every step the stop ends, cancelled, and does not fail (a second
            # failure, step.failed and its telemetry, on a run that was cancelled). A child cancelled while the
            # parent was not stopping, or one that failed, still fails the step.
            outcome = Outcome(
                step_id=flight.step_id,
                phase=Phase.RUN,
                attempt=flight.attempt,
                ok=False,
                state="abandoned",
                error="cancelled" if self.s.cancelled else "an earlier step failed",
            )
        else:
            outcome = Outcome(
                step_id=flight.step_id,
                phase=Phase.RUN,
                attempt=flight.attempt,
                ok=False,
                error=f"child execution {child_id} {result.get('status')}: {result.get('error')}",
            )
        self.settle([(flight, outcome)])

    def on_settled(self, activity_id: str, pending: Pending, answers: Json, now: datetime) -> None:
        if pending.status is not None:
            self.update(recorded=pending.status)
        verdicts = [_verdict(answer) for answer in (answers or [])]
        for step_id, verdict in zip(pending.steps, verdicts, strict=False):
            flight = self.s.flights.get(step_id)
            if flight is not None and flight.write == activity_id:
                self.apply(flight.model_copy(update={"write": None}), verdict, now)

    def on_settle_failed(self, activity_id: str, pending: Pending, error: str, now: datetime) -> None:
        unsure: list[tuple[Flight, Outcome]] = []
        for step_id in pending.steps:
            flight = self.s.flights.get(step_id)
            if flight is None or flight.write != activity_id:
                continue
            flight = flight.model_copy(update={"write": None})
            if self.s.spec.rules >= 8 and not pending.final_record:
                # Rules 8: the failure is recorded before it is applied, as any attempt's (a result recorded first
                # stands), so a cancel after it reads it and one before it is read with it; once only.
                unsure.append((flight, self.unstarted_outcome(flight, error)))
            else:
                self.attempt_failed(flight, error, True, now)
        self.settle(unsure, final_record=True)

    def due(self, now: datetime) -> None:
        """Apply every deadline that has passed, for attempts whose start is recorded."""
        outcomes: list[tuple[Flight, Outcome]] = []
        held = self.recording_failure
        for flight in list(self.s.flights.values()):
            if flight.write is not None:
                continue
            child = flight.child_execution_id
            if (
                flight.stage in (Stage.STOPPING, Stage.CHILD)
                and child is not None
                and flight.ends_at is not None
                and flight.ends_at <= now
            ):
                # Set only under rules 11 (cancel_child_failed): the cancel that failed for good is issued again. A
                # child attempt's deadline, if it has passed too, is applied below as ever.
                flight = flight.model_copy(update={"ends_at": None})
                self.put_flight(flight)
                self.cancel_child(child)
            if flight.ends_at is not None and flight.ends_at <= now:
                if flight.stage is Stage.PAUSED:
                    if flight.phase is Phase.RUN:
                        if held:
                            # Rules 8: a retry does not start while a failure is being recorded; once it is applied,
                            # the run stops and the pause ends with the other waits (abandon_waits).
                            continue
                        self.start_attempt(flight.step_id, flight.attempt + 1, now)
                    else:
                        self.start_compensation(flight.step_id, flight.attempt + 1, now)
                    continue
                if flight.stage is Stage.RUNNING and flight.kind is StepKind.WAIT:
                    outcomes.append(
                        (
                            flight,
                            Outcome(
                                step_id=flight.step_id,
                                phase=Phase.RUN,
                                attempt=flight.attempt,
                                ok=True,
                                output={"waited_until": now.isoformat()},
                            ),
                        )
                    )
                    continue
            if flight.deadline is not None and flight.deadline <= now and flight.stage in (Stage.RUNNING, Stage.CHILD):
                spec = self.s.spec
                plan = spec.plan(flight.step_id)
                if flight.phase is Phase.RUN:
                    error = f"step {flight.step_id} timed out after {plan.timeout_s} s"
                else:
                    error = f"compensation of {flight.step_id} timed out after {_compensate_timeout(plan)} s"
                if flight.stage is Stage.CHILD and flight.child_execution_id is not None and self.s.spec.rules >= 3:
                    # Once settled the attempt is no longer in the child stage, so a stopping run would not tell
                    # this child to stop; told now, it compensates itself before a retry starts another beside it.
                    self.cancel_child(flight.child_execution_id)
                    if self.s.spec.rules >= 11:
                        # Rules 11: the step ends when the child does (ADR 0014), not now. A child that succeeded a
                        # moment before it heard the cancel is the step's success, as a result recorded before a
                        # timeout is; anything else ends it by this timeout, and a retry starts only then, never
                        # beside a child still running. Nothing is recorded until then, so the record agrees.
                        self.put_flight(
                            flight.model_copy(update={"stage": Stage.STOPPING, "deadline": None, "error": error})
                        )
                        continue
                outcomes.append(
                    (
                        flight,
                        Outcome(
                            step_id=flight.step_id,
                            phase=flight.phase,
                            attempt=flight.attempt,
                            ok=False,
                            state="timed_out",
                            error=error,
                        ),
                    )
                )
        self.settle(outcomes)

    # -- compensation
    def start_compensation(self, step_id: str, attempt: int, now: datetime) -> None:
        spec = self.s.spec
        step = spec.steps[step_id]
        compensation = step.compensate
        assert compensation is not None  # compensation_order lists only steps that declare one
        plan = spec.plan(step_id)
        try:
            params = self.resolve_params(compensation.params)
        except (UnresolvedReferenceError, ReferenceSyntaxError, ResolvedTooLargeError) as exc:
            error = f"compensation parameters could not be resolved: {exc}"
            self.drop_flight(step_id)
            if spec.rules >= 9:
                # Recorded on its step as a compensation that will not finish (rules 9): before, the step read
                # `succeeded`, with no `compensation_failed` event, and only the run's result named it.
                self.notes.append(
                    StepNote(kind=NoteKind.COMPENSATION_FAILED, step_id=step_id, attempt=attempt, error=error)
                )
            self.compensation_done(step_id, error)
            return
        timeout_s = _compensate_timeout(plan)
        self.starts.append(
            StepStart(
                step_id=step_id,
                phase=Phase.COMPENSATE,
                attempt=attempt,
                kind=StepKind.MODULE,
                action=compensation.action,
                params=params,
                remote=plan.compensate_remote,
                timeout_s=timeout_s,
            )
        )
        self.waits.append(attempt_event(Phase.COMPENSATE, step_id, attempt))
        self.put_flight(
            Flight(
                step_id=step_id,
                phase=Phase.COMPENSATE,
                attempt=attempt,
                kind=StepKind.MODULE,
                stage=Stage.STARTING,
                params=params if spec.rules < 6 else {},  # not kept under rules 6, as a run attempt's
                deadline=now + timedelta(seconds=timeout_s) if timeout_s is not None else None,
            )
        )
        self.view(step_id, {**self.s.views.get(step_id, {}), "state": "compensating", "attempt": attempt})

    def compensation_attempt_failed(self, flight: Flight, error: str, now: datetime) -> None:
        policy = self.s.spec.policy(flight.step_id)
        if flight.attempt >= policy.max_attempts:
            self.drop_flight(flight.step_id)
            self.compensation_done(flight.step_id, error)
            return
        retry_at = now + timedelta(seconds=self.retry_delay(policy, flight.attempt + 1))
        if self.s.spec.rules < 5:
            self.put_flight(
                flight.model_copy(update={"stage": Stage.PAUSED, "deadline": None, "ends_at": retry_at, "write": None})
            )
            return
        # Recorded before the pause counts, as a run-phase retry is: the step reads compensating with its retry's
        # time, not compensation_failed (which is written only when no attempt is left).
        self.notes.append(
            StepNote(
                kind=NoteKind.COMPENSATION_RETRYING,
                step_id=flight.step_id,
                attempt=flight.attempt,
                next_attempt=flight.attempt + 1,
                max_attempts=policy.max_attempts,
                retry_at=retry_at.isoformat(),
                error=error,
            )
        )
        self.put_flight(
            flight.model_copy(
                update={"stage": Stage.PAUSED, "deadline": None, "ends_at": retry_at, "error": error, "write": ""}
            )
        )
        self.view(
            flight.step_id,
            {
                **self.s.views.get(flight.step_id, {}),
                "state": "compensating",
                "attempt": flight.attempt,
                "next_attempt": flight.attempt + 1,
                "retry_at": retry_at.isoformat(),
                "error": error,
            },
        )

    def compensation_done(self, step_id: str, error: str | None) -> None:
        self.drop_flight(step_id)
        if error is None:
            self.update(compensated=(*self.s.compensated, step_id))
            self.view(step_id, {**self.s.views.get(step_id, {}), "state": "compensated"})
        else:
            # Later compensations still run: leaving more undone would not make this one succeed.
            self.update(compensation_failed={**self.s.compensation_failed, step_id: error})
            self.view(step_id, {**self.s.views.get(step_id, {}), "state": "compensation_failed", "error": error})

    # -- progress
    def desired_status(self) -> Status:
        """waiting while every running step waits on a person or a remote worker, once its request is recorded."""
        run_flights = [f for f in self.s.flights.values() if f.phase is Phase.RUN]
        starting = {start.step_id for start in self.starts}
        if run_flights and all(
            (f.stage is Stage.RUNNING or (f.stage is Stage.STARTING and f.step_id in starting))
            and (f.kind is StepKind.APPROVAL or (f.kind is StepKind.MODULE and self.s.spec.plan(f.step_id).remote))
            for f in run_flights
        ):
            return Status.WAITING
        return Status.RUNNING

    def flush(self) -> None:
        """Turn the notes and starts decided in this reduction into one dispatch, with the status it implies."""
        spec = self.s.spec
        status: Status | None = None
        if not self.s.started and not any(p.name is Activity.DISPATCH_STEPS for p in self.s.pending.values()):
            status = Status.RUNNING
        elif self.s.started and self.s.phase is RunPhase.RUNNING and not self.s.stopping and not self.status_busy:
            wanted = self.desired_status()
            if wanted is not self.s.recorded:
                status = wanted
        if not self.notes and not self.starts and status is None:
            return
        if not self.notes and not self.starts and self.s.started:
            self.call(
                Activity.RECORD_STATUS,
                RecordStatus(execution_id=spec.execution_id, tenant_id=spec.tenant_id, status=status or Status.RUNNING),
                status=status,
            )
            return
        steps = [
            note.step_id for note in self.notes if note.kind in (NoteKind.RETRYING, NoteKind.COMPENSATION_RETRYING)
        ]
        steps += [start.step_id for start in self.starts]
        finish = self.finishing_level()
        carrying = self.may_carry()
        failure, self.failure = self.failure, None
        cause = self.s.first_failure if spec.rules >= 8 else None
        if not any(note.kind is NoteKind.FAILED and note.step_id == cause for note in self.notes):
            cause = None  # the run's cause came before this dispatch (or it has none)
        activity_id = self.call(
            Activity.DISPATCH_STEPS,
            DispatchSteps(
                execution_id=spec.execution_id,
                tenant_id=spec.tenant_id,
                notes=list(self.notes),
                starts=list(self.starts),
                status=status,
                finish=dict(self.s.completed) if finish else None,
            ),
            steps=steps,
            status=status,
            finish=finish,
            carrying=carrying,
            failure=failure,
            cause=cause,
        )
        for step_id in steps:
            flight = self.s.flights.get(step_id)
            if flight is not None:
                self.put_flight(flight.model_copy(update={"write": activity_id}))
        self.commands.extend(WaitForEvent(name) for name in self.waits)
        self.notes, self.starts, self.waits = [], [], []
        self.starts_chars = 0

    def finishing_level(self) -> bool:
        """Whether the starts being dispatched are the run's last work: module steps only, nothing else out or left,
        so that if every one succeeds the run has succeeded (and the dispatch may record it, ADR 0034)."""
        if self.s.stopping or self.s.phase is not RunPhase.RUNNING or self.s.pending or not self.starts:
            return False
        if any(note.kind is not NoteKind.SKIPPED for note in self.notes):
            return False
        if any(
            start.kind is not StepKind.MODULE or start.phase is not Phase.RUN or start.remote for start in self.starts
        ):
            return False  # only built-in module work is waited for (a remote step's result comes from its worker)
        starting = {start.step_id for start in self.starts}
        if set(self.s.flights) != starting:
            return False
        return set(self.s.spec.steps) == starting | set(self.s.completed) | set(self.s.skipped)

    def may_carry(self) -> bool:
        """Whether the starts being dispatched may be carried on from (ADR 0036): built-in module work of the run
        phase only, and nothing else out (no other attempt, activity or timer), so that nothing but a cancel or a
        result of these very starts can come before the dispatch's answer, and both can wait for it."""
        if self.s.stopping or self.s.phase is not RunPhase.RUNNING or self.s.pending or self.s.timer_at is not None:
            return False
        if not self.starts or any(
            start.kind is not StepKind.MODULE or start.phase is not Phase.RUN or start.remote for start in self.starts
        ):
            return False
        return set(self.s.flights) == {start.step_id for start in self.starts}

    def adopt(self, rounds: Sequence[Carried], now: datetime) -> None:
        """Take the levels a dispatch carried on to as the answers of the dispatches this reduction asks for, while
        each is the one asked for (same activity id, same batch); the first that is not stops it, and is asked for."""
        for carried in rounds:
            call = next(
                (
                    command
                    for command in self.commands
                    if isinstance(command, CallActivity)
                    and command.id == carried.id
                    and command.name is Activity.DISPATCH_STEPS
                ),
                None,
            )
            pending = self.s.pending.get(carried.id)
            if call is None or pending is None or not isinstance(call.input, DispatchSteps):
                return
            if call.input.digest() != carried.batch_sha256:
                return
            self.commands.remove(call)
            self.update(pending={k: v for k, v in self.s.pending.items() if k != carried.id})
            self.on_dispatched(carried.id, pending, carried.answer, now)
            if self.s.phase is RunPhase.ENDED and any(isinstance(c, Complete) for c in self.commands):
                return
            self.advance(now)

    def advance(self, now: datetime) -> None:
        """Decide what happens next once an event was applied: schedule, compensate, end, or continue as new."""
        for _ in range(len(self.s.spec.steps) * 4 + 8):  # each round either settles something or stops
            before = self.progress()
            if self.s.phase is RunPhase.RUNNING:
                self.advance_run(now)
            if self.s.phase is RunPhase.COMPENSATING:
                self.advance_compensation(now)
            if before == self.progress():
                break
        self.flush()
        self.arm_timer()

    def progress(self) -> tuple[object, ...]:
        """What a round of `advance` may change; a round that changes none of it ends the loop. Under rules 8 a
        compensation given up without starting (its parameters did not resolve) counts: it changes nothing else, so
        the loop stopped before the next compensation or the run's end, and the run stayed compensating for ever
        (earlier rules keep that, so that their histories replay as recorded)."""
        counted = (self.s.phase, len(self.s.flights), len(self.s.pending), len(self.starts), len(self.notes))
        if self.s.spec.rules < 8:
            return counted
        return (*counted, len(self.s.compensated), len(self.s.compensation_failed))

    def holds_stored_outputs(self, step_id: str, output: Json) -> bool:
        """Whether a child's output carries step outputs stored as blobs (rules 4): read like a stored output, or a
        reference into them met the blob's reference instead of the output."""
        if self.s.spec.rules < 4 or self.s.spec.plan(step_id).kind != StepKind.INTENT.value:
            return False
        outputs = output.get("outputs") if isinstance(output, dict) else None
        return isinstance(outputs, dict) and any(is_blob_ref(item) for item in outputs.values())

    @property
    def child_timeout_holds(self) -> bool:
        """Rules 11: an `intent.run` attempt timed out with no retry left and waits for its child's end (STOPPING, or
        SETTLING that end's record): nothing new starts meanwhile, as nothing starts while a failure is recorded
        (`recording_failure`). The run would have stopped at the timeout under rules 10; unless the child succeeded,
        it stops once the child has ended, and its waits go on until then (the child may still succeed, and the run
        carries on). Never so under earlier rules."""
        if self.s.spec.rules < 11:
            return False
        return any(
            flight.phase is Phase.RUN
            and flight.kind is StepKind.INTENT
            and flight.error is not None  # the timeout it ends by (set only as it times out, rules 11)
            and flight.stage in (Stage.STOPPING, Stage.SETTLING)
            and flight.attempt >= self.s.spec.policy(flight.step_id).max_attempts
            for flight in self.s.flights.values()
        )

    def advance_run(self, now: datetime) -> None:
        spec = self.s.spec
        if self.recording_failure or any(p.name is Activity.LOAD_OUTPUT for p in self.s.pending.values()):
            return  # nothing resolves against an output not read yet, or one whose failure is being recorded
        stored = [
            step_id
            for step_id, output in self.s.completed.items()
            if step_id not in self.s.loaded and (is_blob_ref(output) or self.holds_stored_outputs(step_id, output))
        ]
        if stored:
            wanted = [step_id for step_id in stored if step_id in spec.output_paths]
            self.update(loaded={**self.s.loaded, **{k: self.s.completed[k] for k in stored if k not in wanted}})
            for step_id in wanted:
                self.call(
                    Activity.LOAD_OUTPUT,
                    LoadOutput(
                        tenant_id=spec.tenant_id,
                        output=self.s.completed[step_id],
                        paths=[list(path) for path in sorted(spec.output_paths[step_id])],
                        child=spec.plan(step_id).kind == StepKind.INTENT.value,
                    ),
                    steps=[step_id],
                )
            if wanted:
                return
        if not self.s.stopping and not self.child_timeout_holds:
            schedule = next_steps(spec.graph, self.s.run_state(), spec.inputs)
            for step_id in schedule.skipped:
                self.update(skipped=(*self.s.skipped, step_id))
                self.view(step_id, {"state": "skipped"})
                self.notes.append(StepNote(kind=NoteKind.SKIPPED, step_id=step_id))
            if self.should_continue_as_new(schedule.ready):
                self.commands.append(ContinueAsNew({"machine": self.continued().model_dump(mode="json")}))
                self.update(phase=RunPhase.ENDED)
                return
            for step_id in schedule.ready:
                if self.s.stopping:
                    break  # a step that failed while starting (unresolvable parameters) stops the rest
                self.start_attempt(step_id, 1, now)
            if schedule.finished and self.s.started and not self.s.pending and not self.notes:
                self.end()
                return
        if self.s.stopping and self.s.started and not self.s.flights and not self.notes and not self.s.pending:
            self.update(
                phase=RunPhase.COMPENSATING,
                to_compensate=tuple(compensation_order(self.s.order, spec.graph)),
            )
            if self.s.to_compensate:
                self.call(
                    Activity.RECORD_STATUS,
                    RecordStatus(
                        execution_id=spec.execution_id,
                        tenant_id=spec.tenant_id,
                        status=Status.COMPENSATING,
                        error=self.cause,
                    ),
                    status=Status.COMPENSATING,
                )

    def should_continue_as_new(self, ready: Sequence[str]) -> bool:
        """Between levels, with nothing out, a long run continues as new so each generation's history is short.

        Nothing waits then but the cancel event, and a cancel raised meanwhile reaches the next generation (or is
        read from its first dispatch's answer, which reports a recorded cancel request)."""
        return (
            bool(ready)
            and self.s.settled >= CONTINUE_AFTER_STEPS
            and not self.s.flights
            and not self.s.pending
            and not self.notes
            and not self.starts
        )

    def continued(self) -> State:
        return self.s.model_copy(
            update={"generation": self.s.generation + 1, "seq": 0, "settled": 0, "timer_at": None, "pending": {}}
        )

    @property
    def cause(self) -> str:
        return "cancelled" if self.s.cancelled else self.s.failed.get(self.s.first_failure or "", "failed")

    def advance_compensation(self, now: datetime) -> None:
        if self.s.flights or self.s.pending or self.starts:
            return
        remaining = [
            step_id
            for step_id in self.s.to_compensate or ()
            if step_id not in self.s.compensated and step_id not in self.s.compensation_failed
        ]
        if remaining:
            self.start_compensation(remaining[0], 1, now)
            return
        if self.notes and self.s.spec.rules >= 9:
            # A compensation given up is recorded first (rules 9): a dispatch beside the end's record, or after it,
            # found the execution ended and recorded nothing. The end comes with the dispatch's answer.
            return
        self.end()

    def end(self) -> None:
        spec = self.s.spec
        if self.s.pending:
            return
        if not self.s.stopping and self.s.recorded is Status.SUCCEEDED:
            # Recorded by the dispatch of the last level (ADR 0034): nothing is left to record.
            self.update(phase=RunPhase.ENDED)
            self.commands.append(Complete(_result(self.s, Status.SUCCEEDED)))
            return
        if not self.s.stopping:
            record = RecordStatus(
                execution_id=spec.execution_id,
                tenant_id=spec.tenant_id,
                status=Status.SUCCEEDED,
                output=dict(self.s.completed),
            )
        else:
            ending = Status.CANCELLED if self.s.cancelled else Status.FAILED
            result = _result(self.s, ending)
            record = RecordStatus(
                execution_id=spec.execution_id,
                tenant_id=spec.tenant_id,
                status=ending,
                error=self.cause,
                output={key: value for key, value in result.items() if key != "status"},
            )
        self.update(phase=RunPhase.ENDED)
        self.call(Activity.RECORD_STATUS, record, status=record.status)

    def arm_timer(self) -> None:
        """One durable timer for the earliest deadline; a timer that fires earlier than needed is simply re-armed."""
        if self.s.phase is RunPhase.ENDED:
            return
        # Only attempts whose start (or retry) is recorded: the others' deadlines are applied when it is. Nor a retry
        # held back while a failure is recorded (rules 8): a pause already over would re-arm the timer at once.
        held = self.recording_failure
        deadlines = [
            moment
            for flight in self.s.flights.values()
            if flight.write is None and not (held and flight.stage is Stage.PAUSED and flight.phase is Phase.RUN)
            for moment in (flight.deadline, flight.ends_at)
            if moment is not None
        ]
        if not deadlines:
            return
        earliest = min(deadlines)
        if self.s.timer_at is None or earliest < self.s.timer_at:
            self.update(timer_at=earliest)
            self.commands.append(SetTimer(earliest))


def begin(request: dict[str, Json], now: datetime) -> tuple[State, list[Command]]:
    """The first reduction of a generation: from the start input, or from the state a previous one continued with."""
    if "machine" in request:
        state = State.model_validate(request["machine"])
    else:
        definition = Definition.model_validate(request["definition"])
        if definition.steps is None:
            raise ValueError("a declaration must be expanded into its blueprint's steps before it runs")
        spec = Spec(
            execution_id=str(request["execution_id"]),
            tenant_id=str(request["tenant_id"]),
            definition=definition,
            inputs=dict(request.get("inputs") or {}),
            plans={key: StepPlan.model_validate(value) for key, value in (request.get("plan") or {}).items()},
            intent_id=_optional_str(request.get("intent_id")),
            intent_version=_optional_int(request.get("intent_version")),
            traceparent=_optional_str(request.get("traceparent")),
            rules=_optional_int(request.get("rules")) or 2,
        )
        reused = dict(request.get("reused") or {})
        state = State(
            spec=spec,
            completed=reused,
            order=_reused_order(reused, definition) if spec.rules >= 3 else tuple(reused),
            views={
                step.step_id: {"state": "succeeded", "reused": True} if step.step_id in reused else {"state": "pending"}
                for step in definition.steps
            },
        )
    work = _Step(state)
    work.commands.append(WaitForEvent(CANCEL_EVENT))
    # A first generation's first dispatch also records the move to running (and learns of an earlier cancel).
    work.advance(now)
    # Events a carrying dispatch's answer was taken with while the last generation continued as new apply now.
    return _apply_deferred(work)


def reduce(state: State, event: Event) -> tuple[State, list[Command]]:
    """Apply one event; returns the new state and what to do now."""
    return _reduce(state, event, defer=True)


def _reduce(state: State, event: Event, *, defer: bool) -> tuple[State, list[Command]]:
    work = _Step(state)
    if state.phase is RunPhase.ENDED:
        if isinstance(event, ActivityDone | ActivityFailed) and event.id in state.pending:
            return _settle_final(work, event)
        return state, []
    now = event.now
    if defer and isinstance(event, EventRaised | TimerFired) and any(p.carrying for p in state.pending.values()):
        # A carrying dispatch is out: what it carried on to must be taken before anything else is applied.
        name, data = (event.name, event.data) if isinstance(event, EventRaised) else (None, None)
        return state.model_copy(update={"deferred": (*state.deferred, Deferred(name=name, data=data, now=now))}), []
    rounds: list[Carried] = []
    answered_carrying = False
    if isinstance(event, ActivityDone | ActivityFailed):
        pending = state.pending.get(event.id)
        if pending is None:
            return state, []
        work.update(pending={k: v for k, v in state.pending.items() if k != event.id})
        answered_carrying = pending.carrying
        if isinstance(event, ActivityDone) and pending.name is Activity.DISPATCH_STEPS:
            answer = DispatchAnswer.model_validate(_object(event.result))
            work.on_dispatched(event.id, pending, answer, now)
            rounds = answer.then if pending.carrying else []
        elif isinstance(event, ActivityDone):
            _on_activity_done(work, event, pending)
        else:
            _on_activity_failed(work, event, pending)
    elif isinstance(event, EventRaised):
        work.on_result(event.name, event.data, now)
    elif isinstance(event, TimerFired):
        work.update(timer_at=None)
        work.due(now)
    elif isinstance(event, ChildEnded):
        work.on_child_ended(event)
    if work.s.phase is not RunPhase.ENDED or not any(isinstance(c, Complete) for c in work.commands):
        work.advance(now)
        work.adopt(rounds, now)
    return _apply_deferred(work) if answered_carrying else _finish(work)


CARRY_MAX_BYTES = 256 * 1024
"""The largest state a carrying dispatch is sent (its input is kept in history); a larger one is not carried on."""


def carry(state: State, activity_id: str) -> dict[str, Json] | None:
    """What the orchestrator sends a carrying dispatch besides its batch (DispatchSteps.carry); None when the call is
    not a carrying dispatch, or its state is too large to send (the dispatch then answers its own level only)."""
    pending = state.pending.get(activity_id)
    if pending is None or not pending.carrying:
        return None
    dumped = state.model_dump(mode="json")
    if len(json.dumps(dumped, separators=(",", ":"))) > CARRY_MAX_BYTES:
        return None
    return {"activity_id": activity_id, "state": dumped}


def carried_on(state: State, commands: Sequence[Command]) -> CallActivity | None:
    """The dispatch a carrying dispatch may run itself next (ADR 0036): the reduction of its answer asks for one
    carrying dispatch and nothing else but waits for its starts' results; None otherwise."""
    calls = [command for command in commands if not isinstance(command, WaitForEvent)]
    if len(calls) != 1 or not isinstance(calls[0], CallActivity):
        return None
    pending = state.pending.get(calls[0].id)
    if pending is None or not pending.carrying or not isinstance(calls[0].input, DispatchSteps):
        return None
    return calls[0]


def _apply_deferred(work: _Step) -> tuple[State, list[Command]]:
    """Once a carrying dispatch's answer is taken (with the levels it carried on to), the events that waited for it,
    in the order they came; a carrying dispatch asked for meanwhile is sent the state they leave."""
    deferred = work.s.deferred
    state, commands = work.s.model_copy(update={"deferred": ()}), list(work.commands)
    for waited in deferred:
        state, more = _reduce(state, waited.event(), defer=False)
        commands += more
    return state, commands


def _finish(work: _Step) -> tuple[State, list[Command]]:
    return work.s, work.commands


def _settle_final(work: _Step, event: ActivityDone | ActivityFailed) -> tuple[State, list[Command]]:
    """The run has ended; the answer of its last record lets it complete with the result it recorded."""
    pending = work.s.pending[event.id]
    work.update(pending={k: v for k, v in work.s.pending.items() if k != event.id})
    if isinstance(event, ActivityFailed):
        raise RuntimeError(f"the execution's end could not be recorded: {event.error}")
    if pending.name is Activity.RECORD_STATUS and pending.status in TERMINAL:
        return work.s, [Complete(_result(work.s, pending.status))]
    return work.s, []


def _result(state: State, status: Status) -> dict[str, Json]:
    if status is Status.SUCCEEDED:
        return {"status": "succeeded", "outputs": dict(state.completed), "skipped": list(state.skipped)}
    cause = "cancelled" if state.cancelled else state.failed.get(state.first_failure or "", "failed")
    return {
        "status": status.value,
        "failed_step": state.first_failure,
        "error": cause,
        "compensated": list(state.compensated),
        "compensation_failed": dict(state.compensation_failed),
    }


def _on_activity_done(work: _Step, event: ActivityDone, pending: Pending) -> None:
    now = event.now
    if pending.name is Activity.RECORD_OUTCOMES:
        work.on_settled(event.id, pending, _list(event.result), now)
    elif pending.name is Activity.RECORD_STATUS:
        answer = StatusAnswer.model_validate(_object(event.result))
        work.update(recorded=answer.status)
    elif pending.name is Activity.LOAD_OUTPUT:
        step_id = pending.steps[0]
        work.update(loaded={**work.s.loaded, step_id: event.result})


def _on_activity_failed(work: _Step, event: ActivityFailed, pending: Pending) -> None:
    now = event.now
    if pending.name is Activity.DISPATCH_STEPS:
        work.on_dispatch_failed(event.id, pending, event.error, now)
    elif pending.name is Activity.RECORD_OUTCOMES:
        work.on_settle_failed(event.id, pending, event.error, now)
    elif pending.name is Activity.LOAD_OUTPUT:
        # No dependent could resolve against it: the run stops (and compensates), naming what it could not read.
        step_id = pending.steps[0]
        work.update(loaded={**work.s.loaded, step_id: work.s.completed.get(step_id)})
        if work.s.spec.rules >= 8 and work.recording_failure:
            # Rules 8: a failure being recorded already stops the run once applied (its answer saying whether a cancel
            # came first); this one, applied now, would stop it first, unrecorded, whatever that answer says.
            return
        if not work.s.stopping:
            error = f"the stored output of step {step_id} could not be read: {event.error}"
            reader = work.first_reader(step_id)
            if work.s.spec.rules >= 8 and reader is not None:
                # Rules 8: recorded first, as the failure of the step that reads it (it cannot resolve), by a
                # dispatch that reads the cancel: a cancel after it is refused, one before it ends the run cancelled.
                work.notes.append(StepNote(kind=NoteKind.FAILED, step_id=reader, attempt=1, error=error))
                work.failure = (reader, error)
                return
            work.update(failed={**work.s.failed, step_id: error}, first_failure=step_id)
            work.abandon_waits()
    elif pending.name is Activity.RECORD_STATUS:
        raise RuntimeError(f"the execution's status could not be recorded: {event.error}")
    elif pending.name is Activity.CANCEL_CHILD and pending.child is not None:
        # Rules 11: an attempt waiting for this child is told again later (cancel_child_failed).
        work.cancel_child_failed(pending.child, now)
    # Otherwise cancel_child: the child's own sweeper and cancel record cover it; nothing here depends on the answer


def _verdict(data: Json) -> Verdict:
    value = _object(data)
    return Verdict(
        ok=bool(value.get("ok")),
        output=value.get("output"),
        error=None if value.get("error") is None else str(value.get("error")),
        retryable=bool(value.get("retryable", True)),
        state=value.get("state"),
        cancel_first=bool(value.get("cancel_first", False)),
    )


def _optional_str(value: Json) -> str | None:
    return value if isinstance(value, str) else None


def _optional_int(value: Json) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _object(value: Json) -> dict[str, Json]:
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else {}


def _list(value: Json) -> list[Json]:
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, list) else []


def _compensate_timeout(plan: StepPlan) -> int | None:
    return plan.compensate_timeout_s or plan.timeout_s


def _reused_order(reused: dict[str, Json], definition: Definition) -> tuple[str, ...]:
    """`order`, which compensation reverses, for the reused steps: they come in definition position, and
    `depends_on` may name a later step; by dependency level, a dependent is undone before what it depends on."""
    level_order = {
        step_id: rank for rank, step_id in enumerate(chain.from_iterable(execution_levels(definition.steps or [])))
    }
    return tuple(sorted(reused, key=lambda step_id: level_order.get(step_id, len(level_order))))


class _WaitError(ValueError):
    """A `wait` step's resolved `seconds` or `until` that gives no point in time; its message is the step's error."""


def _wait_until(now: datetime, params: dict[str, Json]) -> datetime:
    """When a `wait` step ends: `seconds` from now, or `until` (a past time ends at once). Raises _WaitError for a
    value no time can be made of: the save-time check cannot see what a reference resolves to, nor a literal saved
    before the check existed."""
    until_value = params.get("until")
    if until_value:
        text = str(until_value)
        try:
            until = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
        except ValueError:
            raise _WaitError(f"wait: until {_shown(until_value)} is not an ISO 8601 date-time") from None
        try:
            if until.tzinfo is not None and now.tzinfo is None:
                until = until.replace(tzinfo=None) - (until.utcoffset() or timedelta(0))
            elif until.tzinfo is None and now.tzinfo is not None:
                until = until.replace(tzinfo=now.tzinfo)
            return max(until, now)
        except OverflowError:
            raise _WaitError(f"wait: until {_shown(until_value)} is out of range") from None
    seconds_value = params.get("seconds") or 0
    try:
        seconds = float(seconds_value)
    except (TypeError, ValueError):
        raise _WaitError(f"wait: seconds {_shown(seconds_value)} is not a number") from None
    try:
        return now + timedelta(seconds=seconds)
    except (OverflowError, ValueError):  # beyond what a datetime holds, or NaN
        raise _WaitError(f"wait: seconds {_shown(seconds_value)} is out of range") from None


def _within_timeout(now: datetime, ends_at: datetime, params: dict[str, Json], timeout_s: int) -> None:
    """Rules 11: a wait that would end past its step's timeout fails as it starts, naming the bound, instead of
    timing out when the timeout comes ("step w timed out after 2592000 s"). The save-time check refuses a literal
    `seconds` or `until` past it; a value a reference gives, or an `until` saved long ago, is caught here."""
    if ends_at <= now + timedelta(seconds=timeout_s):
        return
    given = (
        f"until {_shown(params.get('until'))}" if params.get("until") else f"seconds {_shown(params.get('seconds'))}"
    )
    raise _WaitError(
        f"wait: {given} ends {(ends_at - now).total_seconds():.0f} s from now, past the step's timeout of {timeout_s} s"
        " (a wait step waits at most its timeout_s)"
    )


def _shown(value: Json) -> str:
    """A tenant's value in an error message, cut short: it may be a whole step output."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
