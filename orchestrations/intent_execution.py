# intent_ref: platform.execution
"""The generic intent orchestrator: runs a pinned definition's step graph with references, when, retries,
timeouts and compensation; deterministic, so it only yields durable tasks and reads the replay-safe clock."""

import json
from collections.abc import Generator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import azure.durable_functions as df
from azure.durable_functions.models.Task import TaskBase, TaskState

from shared.engine.graph import RunState, StepGraph, compensation_order, next_steps
from shared.registry.model import Definition, RetryPolicy, Step
from shared.registry.references import ReferenceSyntaxError, UnresolvedReferenceError, resolve

bp = df.Blueprint()

# By name, not by function object: the real activity arrives with the module dispatch (issue 5 item 3/4);
# until then only its contract binds the two sides (input: one step attempt; output: the step's JSON output).
RUN_STEP = "run_step"

Orchestration = Generator[TaskBase, Any, dict[str, Any]]
_ONE_ATTEMPT = RetryPolicy(max_attempts=1)


@dataclass
class _Flight:
    """One running step: the task it waits on (the attempt's activity, or the pause before the next attempt)."""

    step_id: str
    attempt: int
    task: TaskBase
    waiting_retry: bool = False
    timeout: TaskBase | None = None
    error: str | None = None


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
        self.graph = StepGraph.from_steps(definition.steps)
        self.completed: dict[str, Any] = {}
        self.completion_order: list[str] = []
        self.skipped: list[str] = []
        self.failed: dict[str, str] = {}
        self.running: dict[str, _Flight] = {}
        self.first_failure: str | None = None
        self.phase = "running"
        self.states: dict[str, dict[str, Any]] = {step_id: {"state": "pending"} for step_id in self.steps}

    # ------------------------------------------------------------------------------------------ bookkeeping
    def publish(self) -> None:
        """Custom status at every transition: what a status reader shows until the execution API records it."""
        self.context.set_custom_status({"status": self.phase, "steps": self.states})

    def outputs(self) -> dict[str, Any]:
        state = RunState(self.completed, frozenset(self.skipped), frozenset(self.failed), frozenset(self.running))
        return state.outputs()

    def policy(self, step: Step) -> RetryPolicy:
        return step.retry or _ONE_ATTEMPT

    def payload(self, step: Step, params: dict[str, Any], attempt: int, *, compensation: bool = False,
                action: str | None = None) -> dict[str, Any]:
        """The run_step input: one dict per call, so the activity side re-validates a single document."""
        body: dict[str, Any] = {
            "execution_id": self.execution_id, "tenant_id": self.tenant_id, "step_id": step.step_id,
            "action": action or step.action, "params": params, "attempt": attempt,
        }
        if compensation:
            body["compensation"] = True
        return body

    def timeout_timer(self, step: Step) -> TaskBase | None:
        if step.timeout_s is None:
            return None
        return self.context.create_timer(self.context.current_utc_datetime + timedelta(seconds=step.timeout_s))

    # ---------------------------------------------------------------------------------------- transitions
    def start_attempt(self, step_id: str, attempt: int) -> None:
        """Resolve the parameters against what is known now and call run_step, raced by the step's timeout."""
        step = self.steps[step_id]
        try:
            params = resolve(step.params, self.inputs, self.outputs())
        except (UnresolvedReferenceError, ReferenceSyntaxError) as exc:
            # Retrying cannot help: the same outputs would resolve the same way on every attempt.
            self.running.pop(step_id, None)
            self.fail(step_id, f"parameters could not be resolved: {exc}", attempt)
            return
        task = self.context.call_activity(RUN_STEP, self.payload(step, params, attempt))
        self.running[step_id] = _Flight(step_id, attempt, task, timeout=self.timeout_timer(step))
        self.states[step_id] = {"state": "running", "attempt": attempt,
                                "max_attempts": self.policy(step).max_attempts}

    def succeed(self, flight: _Flight, output: Any) -> None:
        del self.running[flight.step_id]
        self.completed[flight.step_id] = output
        self.completion_order.append(flight.step_id)
        self.states[flight.step_id] = {"state": "succeeded", "attempt": flight.attempt}

    def attempt_failed(self, flight: _Flight, error: str) -> None:
        """Retry after the policy's delay on a durable timer, unless attempts are spent or the run is failing."""
        step = self.steps[flight.step_id]
        policy = self.policy(step)
        if flight.attempt >= policy.max_attempts or self.first_failure is not None:
            del self.running[flight.step_id]
            self.fail(flight.step_id, error, flight.attempt)
            return
        retry_at = self.context.current_utc_datetime + timedelta(seconds=policy.delay_before(flight.attempt + 1))
        flight.task, flight.timeout, flight.waiting_retry, flight.error = (
            self.context.create_timer(retry_at), None, True, error)
        self.states[flight.step_id] = {
            "state": "retrying", "attempt": flight.attempt, "max_attempts": policy.max_attempts,
            "next_attempt": flight.attempt + 1, "retry_at": retry_at.isoformat(), "error": error}

    def fail(self, step_id: str, error: str, attempt: int) -> None:
        """A step's final failure: the first one is the execution's cause, and nothing new starts after it."""
        self.failed[step_id] = error
        self.states[step_id] = {"state": "failed", "attempt": attempt, "error": error}
        if self.first_failure is None:
            self.first_failure = step_id
            self.abandon_retries()

    def abandon_retries(self) -> None:
        """Steps only waiting to retry end now: a retry would be new work, which a failing run does not start."""
        for flight in [flight for flight in self.running.values() if flight.waiting_retry]:
            if not flight.task.is_completed:
                flight.task.cancel()
            del self.running[flight.step_id]
            self.failed[flight.step_id] = flight.error or "failed"
            self.states[flight.step_id] = {"state": "failed", "attempt": flight.attempt, "error": flight.error,
                                           "not_retried": True}

    def handle(self, winner: TaskBase) -> None:
        """Apply the task that completed first: an attempt's result, its timeout, or the end of a retry pause."""
        for flight in list(self.running.values()):
            if winner is flight.task:
                if flight.waiting_retry:
                    self.start_attempt(flight.step_id, flight.attempt + 1)
                    return
                if flight.timeout is not None and not flight.timeout.is_completed:
                    flight.timeout.cancel()  # the result won the race; the timer must not keep the run alive
                if winner.state is TaskState.FAILED:
                    self.attempt_failed(flight, str(winner.result))
                else:
                    self.succeed(flight, winner.result)
                return
            if winner is flight.timeout:
                # The late activity is abandoned: its result, if it ever comes, belongs to no awaited task.
                timeout_s = self.steps[flight.step_id].timeout_s
                self.attempt_failed(flight, f"step {flight.step_id} timed out after {timeout_s} s")
                return
        raise RuntimeError("a completed task matched no running step")  # a bug, never a data condition

    def awaited(self) -> list[TaskBase]:
        tasks: list[TaskBase] = []
        for flight in self.running.values():
            tasks.append(flight.task)
            if flight.timeout is not None:
                tasks.append(flight.timeout)
        return tasks


def _compensate(run: _Run, step_id: str) -> Generator[TaskBase, Any, str | None]:
    """Run one step's compensation with the step's retries and timeout; returns the error, or None on success."""
    step = run.steps[step_id]
    compensation = step.compensate
    assert compensation is not None  # compensation_order only lists steps that declare one
    try:
        params = resolve(compensation.params, run.inputs, run.outputs())
    except (UnresolvedReferenceError, ReferenceSyntaxError) as exc:
        return f"compensation parameters could not be resolved: {exc}"
    policy = run.policy(step)
    error = ""
    for attempt in range(1, policy.max_attempts + 1):
        if attempt > 1:
            yield run.context.create_timer(
                run.context.current_utc_datetime + timedelta(seconds=policy.delay_before(attempt)))
        run.states[step_id] = {"state": "compensating", "attempt": attempt, "max_attempts": policy.max_attempts}
        run.publish()
        task = run.context.call_activity(
            RUN_STEP, run.payload(step, params, attempt, compensation=True, action=compensation.action))
        timer = run.timeout_timer(step)
        winner = yield run.context.task_any([task] if timer is None else [task, timer])
        if winner is timer:
            error = f"compensation of {step_id} timed out after {step.timeout_s} s"
            continue
        if timer is not None and not timer.is_completed:
            timer.cancel()
        if winner.state is not TaskState.FAILED:
            return None
        error = str(winner.result)
    return error


@bp.orchestration_trigger(context_name="context")
def intent_execution_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Run an intent's steps: every ready step in parallel, each with retries and a timeout; after a step's final
    failure, let running steps end, then compensate completed steps in reverse completion order.

    Input: {"execution_id", "tenant_id", "definition": <normalized definition>, "inputs": {...}}.
    Output: {"status": "succeeded", "outputs": {id: output}, "skipped": [...]} or {"status": "failed",
    "failed_step", "error", "compensated": [...], "compensation_failed": {id: error}}.
    """
    request = context.get_input()
    if isinstance(request, str):  # the SDK may hand the input over as its JSON text
        request = json.loads(request)
    run = _Run(context, request)
    run.publish()
    while True:
        if run.first_failure is None:
            schedule = next_steps(run.graph, RunState(run.completed, frozenset(run.skipped), frozenset(run.failed),
                                                      frozenset(run.running)), run.inputs)
            for step_id in schedule.skipped:
                run.skipped.append(step_id)
                run.states[step_id] = {"state": "skipped"}
            for step_id in schedule.ready:
                if run.first_failure is not None:
                    break  # a step that failed while starting (unresolvable parameters) stops the rest
                run.start_attempt(step_id, 1)
            if schedule.finished:
                break
        if not run.running:
            break
        run.publish()
        winner = yield context.task_any(run.awaited())
        run.handle(winner)

    if run.first_failure is None:
        run.phase = "succeeded"
        run.publish()
        return {"status": "succeeded", "outputs": dict(run.completed), "skipped": list(run.skipped)}

    run.phase = "compensating"
    compensated: list[str] = []
    compensation_failed: dict[str, str] = {}
    for step_id in compensation_order(run.completion_order, run.graph):
        error = yield from _compensate(run, step_id)
        if error is None:
            compensated.append(step_id)
            run.states[step_id] = {**run.states[step_id], "state": "compensated"}
        else:
            # Later compensations still run: leaving more undone would not make this one succeed.
            compensation_failed[step_id] = error
            run.states[step_id] = {**run.states[step_id], "state": "compensation_failed", "error": error}
    run.phase = "failed"
    run.publish()
    return {"status": "failed", "failed_step": run.first_failure, "error": run.failed[run.first_failure],
            "compensated": compensated, "compensation_failed": compensation_failed}
