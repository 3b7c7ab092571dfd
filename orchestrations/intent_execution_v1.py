# intent_ref: platform.execution
"""The first-generation intent orchestrator, kept registered (unchanged) until no execution started on it runs."""

import functools
import json
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df
from azure.durable_functions.models.Task import TaskBase, TaskState, TimerTask

from shared.engine.graph import RunState, StepGraph, compensation_order, next_steps, referenced_output_paths
from shared.engine.payloads import is_blob_ref
from shared.engine.protocol import (
    CANCEL_CHILD,
    CANCEL_EVENT,
    DISPATCH_STEP,
    LOAD_OUTPUT,
    RECORD_PROGRESS,
    StepPlan,
    approval_event,
    attempt_event,
)
from shared.registry.model import Definition, RetryPolicy, Step
from shared.registry.references import ReferenceSyntaxError, UnresolvedReferenceError, resolve
from shared.typed_triggers import typed

bp = df.Blueprint()
# Its own name, also for the children it starts: a replay must schedule what its history recorded.
ORCHESTRATOR_V1 = "intent_execution_orchestrator"

Orchestration = Generator[TaskBase, Any, dict[str, Any]]
_ONE_ATTEMPT = RetryPolicy(max_attempts=1)
# Bookkeeping writes are idempotent, so a transient database or hub error is simply tried again.
_BOOKKEEPING_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=5)


@dataclass
class _Flight:
    """One running step attempt and the tasks it waits on.

    `task` is what the attempt is waiting for: the result event (module, approval), the durable timer (wait),
    the child orchestration (intent.run), the pause before the next attempt, or a `settle` activity that
    records an outcome and answers with the verdict that was applied. `side` is a bookkeeping task that runs
    beside it (the dispatch, or the record of a retry); its failure fails the attempt.
    """

    step_id: str
    attempt: int
    kind: str
    task: TaskBase
    side: TaskBase | None = None
    side_is_record: bool = False
    timeout: TaskBase | None = None
    stage: str = "waiting"  # waiting | starting_child | settling | retry_pause
    error: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


class _Run:
    """The orchestration's state between yields; everything here is rebuilt identically on every replay."""

    def __init__(self, context: df.DurableOrchestrationContext, request: dict[str, Any]) -> None:
        self.context = context
        self.execution_id = str(request["execution_id"])
        self.tenant_id = str(request["tenant_id"])
        self.inputs: dict[str, Any] = dict(request.get("inputs") or {})
        definition = Definition.model_validate(request["definition"])
        if definition.steps is None:
            raise ValueError("a declaration must be expanded into its blueprint's steps before it runs")
        self.steps: dict[str, Step] = {step.step_id: step for step in definition.steps}
        self.plans = {step_id: StepPlan.model_validate(value) for step_id, value in (request.get("plan") or {}).items()}
        self.graph = StepGraph.from_steps(definition.steps)
        self.completed: dict[str, Any] = {}
        self.completion_order: list[str] = []
        for step_id, output in (request.get("reused") or {}).items():
            self.completed[step_id] = output
            self.completion_order.append(step_id)
        self.skipped: list[str] = []
        self.failed: dict[str, str] = {}
        self.running: dict[str, _Flight] = {}
        self.first_failure: str | None = None
        self.cancelled = False
        self.phase = "running"
        self.recorded_status = "pending"
        self.status_task: TaskBase | None = None
        self.bookkeeping: list[TaskBase] = []
        self.states: dict[str, dict[str, Any]] = {
            step_id: {"state": "succeeded", "reused": True} if step_id in self.completed else {"state": "pending"}
            for step_id in self.steps
        }
        self.cancel_task = context.wait_for_external_event(CANCEL_EVENT)
        self.loaded: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ bookkeeping
    def publish(self) -> None:
        """Custom status at every transition: the orchestration's own view, beside what Postgres records."""
        self.context.set_custom_status({"status": self.phase, "steps": self.states})

    def state(self) -> RunState:
        """What the scheduler and references see: a stored output reads as the parts of it that were loaded."""
        readable = {step_id: self.loaded.get(step_id, output) for step_id, output in self.completed.items()}
        return RunState(readable, frozenset(self.skipped), frozenset(self.failed), frozenset(self.running))

    def outputs(self) -> dict[str, Any]:
        return self.state().outputs()

    @functools.cached_property
    def output_paths(self) -> dict[str, frozenset[tuple[str, ...]]]:
        """Which paths into each step's output later steps read (scanned only once an output is stored)."""
        return referenced_output_paths(list(self.steps.values()))

    def load_outputs(self) -> Generator[TaskBase, Any, None]:
        """Read the referenced parts of outputs stored as blobs (new, or reused by a retry) before anything
        resolves a reference or a condition against them."""
        stored = [
            step_id for step_id, output in self.completed.items() if step_id not in self.loaded and is_blob_ref(output)
        ]
        if not stored:
            return  # the common case: every episode replays from the start, so nothing is scanned for it
        pending = [step_id for step_id in stored if step_id in self.output_paths]
        self.loaded.update({step_id: self.completed[step_id] for step_id in stored if step_id not in pending})
        if not pending:
            return
        tasks = [
            self.context.call_activity_with_retry(
                LOAD_OUTPUT,
                _BOOKKEEPING_RETRY,
                {
                    "tenant_id": self.tenant_id,
                    "output": self.completed[step_id],
                    "paths": [list(path) for path in sorted(self.output_paths[step_id])],
                },
            )
            for step_id in pending
        ]
        try:
            parts = yield self.context.task_all(tasks)
        except Exception as exc:
            # No dependent could resolve against it: the run stops (and compensates), naming what it could not read.
            self.loaded.update({step_id: self.completed[step_id] for step_id in pending})
            if not self.stopping:
                self.first_failure = pending[0]
                self.failed[pending[0]] = f"the stored output of step {pending[0]} could not be read: {exc}"
                self.abandon_waits()
            return
        for step_id, loaded in zip(pending, parts, strict=True):
            self.loaded[step_id] = _json(loaded)

    def policy(self, step: Step) -> RetryPolicy:
        return step.retry or _ONE_ATTEMPT

    def plan(self, step_id: str) -> StepPlan:
        return self.plans.get(step_id) or StepPlan(kind="module", timeout_s=self.steps[step_id].timeout_s)

    def record(self, kind: str, **data: Any) -> TaskBase:
        """Schedule an idempotent write of the execution's progress (activity `record_progress`)."""
        body = {"kind": kind, "execution_id": self.execution_id, "tenant_id": self.tenant_id, **data}
        return self.context.call_activity_with_retry(RECORD_PROGRESS, _BOOKKEEPING_RETRY, body)

    def note(self, kind: str, **data: Any) -> None:
        """A write nobody waits for now; the run awaits every such write before it records its end."""
        self.bookkeeping.append(self.record(kind, **data))

    def dispatch(
        self,
        step_id: str,
        phase: str,
        attempt: int,
        action: str,
        params: dict[str, Any],
        remote: bool,
        timeout_s: int | None,
    ) -> TaskBase:
        """Schedule the activity that records the attempt and puts its work on `module-work`."""
        body = {
            "execution_id": self.execution_id,
            "tenant_id": self.tenant_id,
            "step_id": step_id,
            "phase": phase,
            "attempt": attempt,
            "action": action,
            "params": params,
            "remote": remote,
            "timeout_s": timeout_s,
        }
        return self.context.call_activity_with_retry(DISPATCH_STEP, _BOOKKEEPING_RETRY, body)

    def timer_after(self, seconds: float | None) -> TaskBase | None:
        if seconds is None:
            return None
        return self.context.create_timer(self.context.current_utc_datetime + timedelta(seconds=seconds))

    # ---------------------------------------------------------------------------------------- transitions
    def start_attempt(self, step_id: str, attempt: int) -> None:
        """Resolve the parameters against what is known now and start the attempt, raced by its timeout."""
        step = self.steps[step_id]
        plan = self.plan(step_id)
        try:
            params = resolve(step.params, self.inputs, self.outputs())
        except (UnresolvedReferenceError, ReferenceSyntaxError) as exc:
            # Retrying cannot help: the same outputs would resolve the same way on every attempt.
            self.running.pop(step_id, None)
            self.fail(step_id, f"parameters could not be resolved: {exc}", attempt)
            self.note("step_failed", step_id=step_id, attempt=attempt, error=self.failed[step_id])
            return
        key = {"step_id": step_id, "phase": "run", "attempt": attempt}
        if plan.kind == "approval":
            side = self.record("approval_requested", **key, action=step.action, params=params)
            task = self.context.wait_for_external_event(approval_event(step_id, attempt))
        elif plan.kind == "wait":
            side = self.record("begin", **key, action=step.action, params=params)
            task = self.context.create_timer(_wait_until(self.context.current_utc_datetime, params))
        elif plan.kind == "intent":
            side = None
            task = self.record("start_child", **key, action=step.action, params=params)
        else:
            side = self.dispatch(step_id, "run", attempt, step.action, params, plan.remote, plan.timeout_s)
            task = self.context.wait_for_external_event(attempt_event("run", step_id, attempt))
        flight = _Flight(
            step_id,
            attempt,
            plan.kind,
            task,
            side=side,
            side_is_record=plan.kind in ("approval", "wait"),
            timeout=self.timer_after(plan.timeout_s),
            stage="starting_child" if plan.kind == "intent" else "waiting",
            params=params,
        )
        self.running[step_id] = flight
        self.states[step_id] = {
            "state": "waiting" if plan.kind == "approval" else "running",
            "attempt": attempt,
            "max_attempts": self.policy(step).max_attempts,
        }

    def settle(self, flight: _Flight, **outcome: Any) -> None:
        """Record the attempt's outcome; the activity answers with the verdict applied first (it may differ)."""
        flight.task = self.record("settle", step_id=flight.step_id, phase="run", attempt=flight.attempt, **outcome)
        flight.stage = "settling"
        _drop_timer(flight.timeout)
        flight.timeout = None

    def succeed(self, flight: _Flight, output: Any) -> None:
        _drop_timer(flight.timeout)
        del self.running[flight.step_id]
        self.completed[flight.step_id] = output
        self.completion_order.append(flight.step_id)
        self.states[flight.step_id] = {"state": "succeeded", "attempt": flight.attempt}

    def apply(self, flight: _Flight, verdict: Any) -> None:
        """Apply a recorded verdict {"ok", "output" | "error", "retryable"}."""
        if isinstance(verdict, str):
            verdict = json.loads(verdict)
        if verdict.get("ok"):
            self.succeed(flight, verdict.get("output"))
        else:
            self.attempt_failed(flight, str(verdict.get("error") or "failed"), bool(verdict.get("retryable", True)))

    def attempt_failed(self, flight: _Flight, error: str, retryable: bool = True) -> None:
        """Retry after the policy's delay on a durable timer, unless attempts are spent or the run is stopping."""
        step = self.steps[flight.step_id]
        policy = self.policy(step)
        if not retryable or flight.attempt >= policy.max_attempts or self.stopping:
            _drop_timer(flight.timeout)
            self.keep_side(flight)
            del self.running[flight.step_id]
            self.fail(flight.step_id, error, flight.attempt)
            return
        retry_at = self.context.current_utc_datetime + timedelta(seconds=policy.delay_before(flight.attempt + 1))
        _drop_timer(flight.timeout)
        flight.task, flight.timeout, flight.stage, flight.error = (
            self.context.create_timer(retry_at),
            None,
            "retry_pause",
            error,
        )
        flight.side_is_record = True
        flight.side = self.record(
            "retrying",
            step_id=flight.step_id,
            attempt=flight.attempt,
            next_attempt=flight.attempt + 1,
            max_attempts=policy.max_attempts,
            retry_at=retry_at.isoformat(),
            error=error,
        )
        self.states[flight.step_id] = {
            "state": "retrying",
            "attempt": flight.attempt,
            "max_attempts": policy.max_attempts,
            "next_attempt": flight.attempt + 1,
            "retry_at": retry_at.isoformat(),
            "error": error,
        }

    @property
    def stopping(self) -> bool:
        return self.first_failure is not None or self.cancelled

    def fail(self, step_id: str, error: str, attempt: int) -> None:
        """A step's final failure: the first one is the execution's cause, and nothing new starts after it."""
        self.failed[step_id] = error
        self.states[step_id] = {"state": "failed", "attempt": attempt, "error": error}
        if self.first_failure is None and not self.cancelled:
            self.first_failure = step_id
            self.abandon_waits()

    def keep_side(self, flight: _Flight) -> None:
        """A flight that ends or moves on hands its pending bookkeeping write to the run, which awaits it (a
        pending dispatch is not awaited: the attempt it starts is over, and its late result belongs to no task)."""
        if flight.side is not None and flight.side_is_record and not flight.side.is_completed:
            self.bookkeeping.append(flight.side)
        flight.side = None

    def cancel(self) -> None:
        """Stop scheduling; steps that only wait end now, work already out is let finish (and compensated)."""
        if self.stopping:
            return  # already failing: the failure stays the cause; compensation happens anyway
        self.cancelled = True
        self.abandon_waits()

    def abandon_waits(self) -> None:
        """Steps that only wait (a retry pause, an approval, a timer) end now: a stopping run starts no work.

        A running child execution is told to cancel (it compensates its own steps); its step ends when it does.
        """
        for flight in self.running.values():
            if flight.kind == "intent" and flight.stage == "waiting":
                self.cancel_child(flight)
        for flight in [
            flight
            for flight in self.running.values()
            if flight.stage == "retry_pause" or (flight.stage == "waiting" and flight.kind in ("approval", "wait"))
        ]:
            for task in (flight.task, flight.timeout):
                _drop_timer(task)
            self.keep_side(flight)
            del self.running[flight.step_id]
            self.failed[flight.step_id] = flight.error or "abandoned"
            self.states[flight.step_id] = {"state": "cancelled", "attempt": flight.attempt, "error": flight.error}
            self.note(
                "abandon",
                step_id=flight.step_id,
                attempt=flight.attempt,
                reason="cancelled" if self.cancelled else "an earlier step failed",
            )

    def cancel_child(self, flight: _Flight) -> None:
        """Ask the flight's child execution to cancel (a bookkeeping write: its answer changes nothing here)."""
        body = {
            "tenant_id": self.tenant_id,
            "execution_id": self.execution_id,
            "child_execution_id": self.states[flight.step_id]["child_execution_id"],
        }
        self.bookkeeping.append(self.context.call_activity_with_retry(CANCEL_CHILD, _BOOKKEEPING_RETRY, body))

    def handle(self, winner: TaskBase) -> None:
        """Apply the task that completed first."""
        if winner is self.cancel_task:
            self.cancel()
            return
        if winner is self.status_task:
            self.status_task = None
            return
        if winner in self.bookkeeping:
            self.bookkeeping.remove(winner)
            return
        for flight in list(self.running.values()):
            if winner is flight.side:
                flight.side = None
                if winner.state is TaskState.FAILED:
                    self.attempt_failed(flight, f"could not start: {winner.result}")
                return
            if winner is flight.timeout:
                # The verdict decides: a result recorded just before the timer fired still counts.
                timeout_s = self.plan(flight.step_id).timeout_s
                self.settle(
                    flight, ok=False, state="timed_out", error=f"step {flight.step_id} timed out after {timeout_s} s"
                )
                return
            if winner is flight.task:
                self.advance(flight, winner)
                return
        raise RuntimeError("a completed task matched no running step")  # a bug, never a data condition

    def advance(self, flight: _Flight, winner: TaskBase) -> None:
        """The flight's own task completed: move it to its next stage, or apply its verdict."""
        if flight.stage == "retry_pause":
            self.keep_side(flight)
            self.start_attempt(flight.step_id, flight.attempt + 1)
        elif winner.state is TaskState.FAILED:
            self.attempt_failed(flight, str(winner.result))
        elif flight.stage == "starting_child":
            child = _json(winner.result)
            if "verdict" in child:  # the child could not start; recorded as the step's failure
                self.apply(flight, child["verdict"])
                return
            flight.stage = "waiting"
            flight.task = self.context.call_sub_orchestrator(ORCHESTRATOR_V1, child["input"], child["execution_id"])
            self.states[flight.step_id]["child_execution_id"] = child["execution_id"]
            if self.stopping:  # the run stopped while the child was being recorded: it starts only to end
                self.cancel_child(flight)
        elif flight.stage == "settling" or flight.kind in ("module", "approval"):
            self.apply(flight, winner.result)
        elif flight.kind == "wait":
            self.settle(flight, ok=True, output={"waited_until": self.context.current_utc_datetime.isoformat()})
        else:  # intent: the child orchestration returned
            result = _json(winner.result)
            child_id = self.states[flight.step_id].get("child_execution_id")
            if result.get("status") == "succeeded":
                self.settle(flight, ok=True, output={"execution_id": child_id, "outputs": result.get("outputs")})
            else:
                self.settle(
                    flight, ok=False, error=f"child execution {child_id} {result.get('status')}: {result.get('error')}"
                )

    def desired_status(self) -> str:
        """waiting while every running step waits on a person or on a remote worker, once the request is out.

        "Once out" matters for the stream: waiting is recorded only after approval_requested (or the dispatch), so a
        reader that sees the status change can already read what it waits for."""
        if self.running and all(
            flight.stage == "waiting"
            and flight.side is None
            and (flight.kind == "approval" or (flight.kind == "module" and self.plan(flight.step_id).remote))
            for flight in self.running.values()
        ):
            return "waiting"
        return "running"

    def sync_status(self) -> None:
        """Record running <-> waiting, one write at a time so the state machine sees them in order."""
        if self.status_task is not None or self.stopping:
            return
        wanted = self.desired_status()
        if wanted != self.recorded_status:
            self.recorded_status = wanted
            self.status_task = self.record("execution", status=wanted)

    def awaited(self) -> list[TaskBase]:
        tasks: list[TaskBase] = [*self.bookkeeping]
        if not self.cancel_task.is_completed:
            tasks.append(self.cancel_task)
        if self.status_task is not None:
            tasks.append(self.status_task)
        for flight in self.running.values():
            tasks.extend(task for task in (flight.task, flight.side, flight.timeout) if task is not None)
        return tasks


def _drop_timer(task: TaskBase | None) -> None:
    """Cancel a pending durable timer so it does not keep the run alive; other tasks are simply left unawaited."""
    if isinstance(task, TimerTask) and not task.is_completed:
        task.cancel()


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _wait_until(now: datetime, params: dict[str, Any]) -> datetime:
    """When a `wait` step ends: `seconds` from now, or `until` (a past time ends at once)."""
    if params.get("until"):
        until = datetime.fromisoformat(str(params["until"]).replace("Z", "+00:00"))
        return max(until, now)
    return now + timedelta(seconds=float(params.get("seconds") or 0))


def _compensate(run: _Run, step_id: str) -> Generator[TaskBase, Any, str | None]:
    """Run one step's compensation with the step's retries and timeout; returns the error, or None on success."""
    step = run.steps[step_id]
    compensation = step.compensate
    assert compensation is not None  # compensation_order only lists steps that declare one
    plan = run.plan(step_id)
    try:
        params = resolve(compensation.params, run.inputs, run.outputs())
    except (UnresolvedReferenceError, ReferenceSyntaxError) as exc:
        return f"compensation parameters could not be resolved: {exc}"
    policy = run.policy(step)
    error = ""
    for attempt in range(1, policy.max_attempts + 1):
        if attempt > 1:
            yield run.context.create_timer(
                run.context.current_utc_datetime + timedelta(seconds=policy.delay_before(attempt))
            )
        run.states[step_id] = {**run.states[step_id], "state": "compensating", "attempt": attempt}
        run.publish()
        timeout_s = plan.compensate_timeout_s or plan.timeout_s
        dispatched = run.dispatch(
            step_id, "compensate", attempt, compensation.action, params, plan.compensate_remote, timeout_s
        )
        result = run.context.wait_for_external_event(attempt_event("compensate", step_id, attempt))
        timer = run.timer_after(timeout_s)
        winner = yield run.context.task_any([task for task in (dispatched, result, timer) if task is not None])
        if winner is dispatched and winner.state is not TaskState.FAILED:
            winner = yield run.context.task_any([task for task in (result, timer) if task is not None])
        if winner is dispatched:
            error = f"compensation of {step_id} could not start: {winner.result}"
            verdict: Any = None
        elif winner is timer:
            verdict = yield run.record(
                "settle",
                step_id=step_id,
                phase="compensate",
                attempt=attempt,
                ok=False,
                state="timed_out",
                error=f"compensation of {step_id} timed out after {timeout_s} s",
            )
        else:
            _drop_timer(timer)
            verdict = winner.result
        if verdict is not None:
            verdict = _json(verdict)
            if verdict.get("ok"):
                return None
            error = str(verdict.get("error"))
    return error


def _record_status(run: _Run, status: str, **data: Any) -> Generator[TaskBase, Any, None]:
    """Wait for every pending write, then record the execution's new status, so its event follows theirs."""
    pending = [task for task in (*run.bookkeeping, run.status_task) if task is not None]
    if pending:
        yield run.context.task_all(pending)
    run.bookkeeping.clear()
    run.status_task = None
    yield run.record("execution", status=status, **data)


@typed(bp.orchestration_trigger(context_name="context"))
def intent_execution_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Run an intent's steps: every ready step in parallel, each with retries and a timeout; after a step's final
    failure or a cancel, let work already out end, then compensate completed steps in reverse completion order.

    Input: {"execution_id", "tenant_id", "definition": <expanded definition>, "inputs", "plan", "reused"}.
    Output: {"status": "succeeded", "outputs": {id: output}, "skipped": [...]} or {"status": "failed" |
    "cancelled", "failed_step", "error", "compensated": [...], "compensation_failed": {id: error}}.
    """
    request = _json(context.get_input())
    run = _Run(context, request)
    started = _json((yield run.record("execution", status="running")))
    if started["status"] in ("cancelled", "failed", "succeeded"):
        return {
            "status": started["status"],
            "failed_step": None,
            "error": "ended before it started",
            "compensated": [],
            "compensation_failed": {},
        }
    run.recorded_status = "running"
    if started.get("cancel_requested"):
        run.cancel()  # the cancel came before the orchestration started; its event may have been lost
    run.publish()
    while True:
        yield from run.load_outputs()
        if not run.stopping:
            schedule = next_steps(run.graph, run.state(), run.inputs)
            for step_id in schedule.skipped:
                run.skipped.append(step_id)
                run.states[step_id] = {"state": "skipped"}
                run.note("skipped", step_id=step_id)
            for step_id in schedule.ready:
                if run.stopping:
                    break  # a step that failed while starting (unresolvable parameters) stops the rest
                run.start_attempt(step_id, 1)
            if schedule.finished:
                break
        if not run.running:
            break
        run.sync_status()
        run.publish()
        winner = yield context.task_any(run.awaited())
        run.handle(winner)

    if not run.stopping:
        run.phase = "succeeded"
        run.publish()
        yield from _record_status(run, "succeeded", output=dict(run.completed))
        return {"status": "succeeded", "outputs": dict(run.completed), "skipped": list(run.skipped)}

    ending = "cancelled" if run.cancelled else "failed"
    cause = "cancelled" if run.cancelled else run.failed[run.first_failure or ""]
    compensated: list[str] = []
    compensation_failed: dict[str, str] = {}
    to_compensate = compensation_order(run.completion_order, run.graph)
    if to_compensate:
        run.phase = "compensating"
        run.publish()
        yield from _record_status(run, "compensating", error=cause)
    for step_id in to_compensate:
        error = yield from _compensate(run, step_id)
        if error is None:
            compensated.append(step_id)
            run.states[step_id] = {**run.states[step_id], "state": "compensated"}
        else:
            # Later compensations still run: leaving more undone would not make this one succeed.
            compensation_failed[step_id] = error
            run.states[step_id] = {**run.states[step_id], "state": "compensation_failed", "error": error}
    run.phase = ending
    run.publish()
    result = {
        "status": ending,
        "failed_step": run.first_failure,
        "error": cause,
        "compensated": compensated,
        "compensation_failed": compensation_failed,
    }
    yield from _record_status(
        run, ending, error=cause, output={key: value for key, value in result.items() if key != "status"}
    )
    return result
