# intent_ref: platform.devhost-durable
"""One orchestrator episode, without I/O: order new events, allocate sequence ids, turn actions into work."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devhost.durable.protocol import (
    ID_CONSUMING_ACTIONS,
    ActionType,
    EventType,
    JsonDict,
    ProtocolError,
    RuntimeStatus,
    action_name,
    action_type,
    check_state,
    completion_id,
    context_json_from_parts,
    event,
    iso,
    parse_iso,
    sdk_event_json,
)
from devhost.durable.retry import Kind, RetryPolicy, RetryState


@dataclass
class SeenAction:
    """An action already executed: what the non-determinism guard compares a replay's actions with."""

    type: int
    name: str | None
    task_id: int | None
    canceled: bool = False

    def to_json(self) -> list[Any]:
        return [self.type, self.name, self.task_id, self.canceled]

    @classmethod
    def from_json(cls, data: list[Any]) -> SeenAction:
        return cls(int(data[0]), data[1], data[2], bool(data[3]))


@dataclass
class Bookkeeping:
    """Per-execution host state that must survive with the history: id counter, seen actions, open retries."""

    next_id: int = 0
    actions: list[SeenAction] = field(default_factory=list)
    retries: dict[int, RetryState] = field(default_factory=dict)

    def allocate(self) -> int:
        """The next sequence id; the SDK's counter advances in exactly the same order."""
        self.next_id += 1
        return self.next_id - 1


@dataclass(frozen=True)
class Message:
    """A pending inbox message: a history event waiting to be delivered to an execution."""

    id: int
    execution_id: str | None  # None: addressed to whichever execution is current (external events)
    event: JsonDict


@dataclass(frozen=True)
class InstanceFacts:
    """What an episode needs to know about its instance."""

    instance_id: str
    execution_id: str
    name: str
    input_json: str | None
    parent_instance_id: str | None


@dataclass(frozen=True)
class Catalog:
    """Durable names the app defines: unknown names fail the orchestration, as in the real host."""

    orchestrators: Collection[str]
    activities: Collection[str]


@dataclass(frozen=True)
class ActivityCall:
    task_id: int
    name: str
    input: str | None


@dataclass(frozen=True)
class TimerRequest:
    task_id: int
    fire_at: datetime


@dataclass(frozen=True)
class ChildStart:
    task_id: int
    instance_id: str
    name: str
    version: str
    input_json: str | None  # ExecutionStarted.Input of the child


@dataclass
class EpisodeResult:
    """Everything the engine must persist for one episode, in one transaction."""

    history: list[JsonDict]
    status: RuntimeStatus
    activities: list[ActivityCall] = field(default_factory=list)
    timers: list[TimerRequest] = field(default_factory=list)
    canceled_timers: list[int] = field(default_factory=list)
    children: list[ChildStart] = field(default_factory=list)
    output_json: str | None = None
    custom_status_json: str | None = None
    custom_status_set: bool = False
    continue_as_new_input: str | None = None  # ExecutionStarted.Input of the next execution
    failure_reason: str | None = None
    failure_details: str | None = None


class _OrchestrationFailed(Exception):
    """The host itself fails the orchestration (unknown function, non-determinism, protocol problem)."""


def orchestrator_failure_message(name: str, error: str) -> str:
    """The output of a failed orchestration, as the real host words it."""
    return f"Orchestrator function '{name}' failed: {error}"


def _missing_function(name: str, kind: str) -> str:
    return f"The function '{name}' doesn't exist, is disabled, or is not an {kind} function."


def _stored_input(action_input: Any) -> str | None:
    # The shim passes the action's input text to DTFx as a string, which serializes it once more.
    return None if action_input is None else json.dumps(action_input)


class Episode:
    """Prepare the context JSON from history plus new messages, then interpret the orchestrator's state."""

    def __init__(
        self,
        *,
        facts: InstanceFacts,
        past: list[JsonDict],
        messages: list[Message],
        book: Bookkeeping,
        now: datetime,
        catalog: Catalog,
        played: list[str] | None = None,
    ) -> None:
        self.facts, self.past, self.book, self.now, self.catalog = facts, past, book, now, catalog
        # `past` as the SDK gets it, serialised: the engine keeps it between episodes instead of redoing it.
        self.played = played if played is not None else [sdk_event_json(e, played=True) for e in past]
        self._scheduled: list[JsonDict] = []
        self._activities: list[ActivityCall] = []
        self._timers: list[TimerRequest] = []
        self._children: list[ChildStart] = []
        self._continued = False
        self._host_failure: str | None = None
        self._started = event(EventType.OrchestratorStarted, now)
        self.new_events = self._order(messages)
        self._allocate_retries()

    # ------------------------------------------------------------------ before the orchestrator runs
    def _order(self, messages: list[Message]) -> list[JsonDict]:
        """Deliverable events: stale and duplicate ones dropped, then put in the order ids must be allocated."""
        resolved = {cid for e in self.past if (cid := completion_id(e)) is not None}
        started = any(e["EventType"] == EventType.ExecutionStarted for e in self.past)
        fresh: list[JsonDict] = []
        for message in sorted(messages, key=lambda m: m.id):
            if message.execution_id is not None and message.execution_id != self.facts.execution_id:
                continue  # addressed to an execution that has ended (continue-as-new, restart)
            if message.event["EventType"] == EventType.ExecutionStarted and started:
                continue
            cid = completion_id(message.event)
            if cid is not None:
                if cid in resolved:
                    continue  # a task resolves once; a second completion would be misrouted by the SDK
                resolved.add(cid)
            fresh.append(message.event)
        # §2.4: the SDK allocates hidden ids (retry timer, re-attempt) while it processes these events, so they
        # must come before any event that can resume user code and make it schedule new (numbered) work.
        return sorted(fresh, key=self._rank)

    def _rank(self, history_event: JsonDict) -> int:
        if history_event["EventType"] == EventType.ExecutionStarted:
            return 0
        return 1 if self._allocating_retry(history_event) is not None else 2

    def _allocating_retry(self, history_event: JsonDict) -> RetryState | None:
        """The retry an event advances by allocating an id: an attempt's failure, or a timer with attempts left.

        The timer after the last attempt allocates nothing: it fails the task and may resume user code, so it is
        ordered with the ordinary events.
        """
        kind = history_event["EventType"]
        cid = completion_id(history_event)
        state = self.book.retries.get(cid) if cid is not None else None
        if state is None:
            return None
        failed = kind in (EventType.TaskFailed, EventType.SubOrchestrationInstanceFailed)
        if state.phase == "attempt" and failed:
            return state
        if state.phase == "timer" and kind == EventType.TimerFired and not state.exhausted:
            return state
        return None

    def _allocate_retries(self) -> None:
        for history_event in self.new_events:
            cid = completion_id(history_event)
            if cid is None or cid not in self.book.retries:
                continue
            state = self._allocating_retry(history_event)
            del self.book.retries[cid]
            if state is None:
                continue  # the attempt succeeded, or the timer after the last attempt fired: the retry is over
            if state.phase == "attempt":  # failed: wait (DTFx creates this timer even after the last attempt)
                timer_id = self.book.allocate()
                self._schedule_timer(timer_id, self.now + state.policy.delay(state.attempt - 1))
                self.book.retries[timer_id] = state.waiting()
            else:  # the wait is over and attempts are left: try again
                attempt_id = self.book.allocate()
                retried = state.next_attempt()
                try:
                    self._schedule_call(
                        attempt_id, retried.kind, retried.name, retried.input, retried.instance_id, retried.version
                    )
                except _OrchestrationFailed as exc:  # the function vanished from the app since the first attempt
                    self._host_failure = str(exc)
                self.book.retries[attempt_id] = retried

    @property
    def has_events(self) -> bool:
        return bool(self.new_events)

    def context(self) -> str:
        """The orchestrationTrigger payload: earlier episodes played, then a fresh OrchestratorStarted."""
        return context_json_from_parts(
            played=self.played,
            fresh=[self._started, *self.new_events],
            instance_id=self.facts.instance_id,
            parent_instance_id=self.facts.parent_instance_id,
            input_json=self.facts.input_json,
        )

    # ------------------------------------------------------------------ after the orchestrator ran
    def finish(self, state: JsonDict | None, failure: str | None, completed_at: datetime) -> EpisodeResult:
        """Interpret the OrchestratorState (`state`), or a failure the SDK could not describe (`failure`)."""
        result = EpisodeResult(history=[], status=RuntimeStatus.Running)
        error: str | None = self._host_failure or failure
        if state is not None:
            # The real host applies customStatus from every response, failed ones included; the SDK omits falsy
            # values, so the previous status sticks.
            if "customStatus" in state:
                result.custom_status_json = json.dumps(state["customStatus"])
                result.custom_status_set = True
            if state.get("error"):
                error = str(state["error"])
            marks = (len(self._scheduled), len(self._activities), len(self._timers), len(self._children))
            try:
                self._apply_actions(state, check_deterministic=not error, result=result)
            except (_OrchestrationFailed, ProtocolError, KeyError, TypeError, ValueError) as exc:
                # Nothing of a rejected response is scheduled; the instance fails instead.
                error = (
                    str(exc)
                    if isinstance(exc, _OrchestrationFailed | ProtocolError)
                    else f"malformed action in the orchestrator's response: {type(exc).__name__}: {exc}"
                )
                del self._scheduled[marks[0] :], self._activities[marks[1] :], self._timers[marks[2] :]
                del self._children[marks[3] :]
        if error is not None:
            reason = orchestrator_failure_message(self.facts.name, error)
            result.status = RuntimeStatus.Failed
            result.output_json = json.dumps(reason)
            result.failure_reason, result.failure_details = reason, error
        elif state is not None and state.get("isDone"):
            if self._continued:
                result.status = RuntimeStatus.ContinuedAsNew
            else:
                result.status = RuntimeStatus.Completed
                result.output_json = json.dumps(state.get("output"))
        result.activities, result.timers, result.children = self._activities, self._timers, self._children
        result.history = [
            self._started,
            *self.new_events,
            *self._scheduled,
            event(EventType.OrchestratorCompleted, completed_at),
        ]
        if result.status.is_terminal:
            result.history.append(
                event(
                    EventType.ExecutionCompleted,
                    completed_at,
                    OrchestrationStatus=result.status.dtfx_code,
                    Result=result.output_json,
                    FailureDetails=None,
                )
            )
        return result

    def _apply_actions(self, state: JsonDict, *, check_deterministic: bool, result: EpisodeResult) -> None:
        flat = check_state(state)
        seen = self.book.actions
        for action, before in zip(flat, seen, strict=False):
            kind = action_type(action)
            if (int(kind), action_name(action)) != (before.type, before.name):
                raise _OrchestrationFailed(self._nondeterminism(before, action))
            if kind == ActionType.CreateTimer and action.get("isCanceled") and not before.canceled:
                before.canceled = True  # cancelled after it was scheduled: drop the pending TimerFired
                if before.task_id is not None:
                    result.canceled_timers.append(before.task_id)
        if check_deterministic and len(flat) < len(seen):
            missing = seen[len(flat)]
            raise _OrchestrationFailed(
                "Non-Deterministic workflow detected: a previous execution of this orchestration scheduled "
                f"{ActionType(missing.type).name} '{missing.name}' with sequence ID {missing.task_id}, but the "
                "current replay execution hasn't (yet?) scheduled it. Was a change made to the orchestrator code "
                "after this instance had already started running?"
            )
        for action in flat[len(seen) :]:
            self._apply_new_action(action, result)

    def _nondeterminism(self, before: SeenAction, action: JsonDict) -> str:
        now_kind = ActionType(int(action["actionType"])).name
        return (
            "Non-Deterministic workflow detected: a previous execution of this orchestration scheduled "
            f"{ActionType(before.type).name} '{before.name}' (sequence ID {before.task_id}), but the current replay "
            f"execution scheduled {now_kind} '{action_name(action)}' in its place. Was a change made to the "
            "orchestrator code after this instance had already started running?"
        )

    def _apply_new_action(self, action: JsonDict, result: EpisodeResult) -> None:
        kind = action_type(action)
        task_id = self.book.allocate() if kind in ID_CONSUMING_ACTIONS else None
        name = action_name(action)
        self.book.actions.append(SeenAction(int(kind), name, task_id, bool(action.get("isCanceled"))))
        if kind in (
            ActionType.CallActivity,
            ActionType.CallActivityWithRetry,
            ActionType.CallSubOrchestrator,
            ActionType.CallSubOrchestratorWithRetry,
        ):
            assert task_id is not None and name is not None
            is_activity = kind in (ActionType.CallActivity, ActionType.CallActivityWithRetry)
            call_kind: Kind = "activity" if is_activity else "orchestration"
            explicit_id = action.get("instanceId")
            version = str(action.get("version") or "")
            self._schedule_call(task_id, call_kind, name, action.get("input"), explicit_id, version)
            if kind in (ActionType.CallActivityWithRetry, ActionType.CallSubOrchestratorWithRetry):
                self.book.retries[task_id] = RetryState(
                    kind=call_kind,
                    name=name,
                    input=action.get("input"),
                    policy=RetryPolicy.from_options(action["retryOptions"]),
                    instance_id=explicit_id,
                    version=version,
                )
        elif kind == ActionType.CreateTimer:
            assert task_id is not None
            fire_at = parse_iso(str(action["fireAt"]))
            if action.get("isCanceled"):
                self._scheduled.append(event(EventType.TimerCreated, self.now, task_id, FireAt=action["fireAt"]))
            else:
                self._schedule_timer(task_id, fire_at)
        elif kind == ActionType.ContinueAsNew:
            self._continued = True
            result.continue_as_new_input = _stored_input(action.get("input"))
        elif kind == ActionType.WaitForExternalEvent:
            pass  # nothing to schedule: EventRaised is matched by name, and the SDK buffers early events
        else:
            raise _OrchestrationFailed(
                f"the local durable host does not support {kind.name} actions (actionType {int(kind)})"
            )

    def _schedule_call(
        self,
        task_id: int,
        kind: Kind,
        name: str,
        input_text: str | None,
        explicit_id: str | None,
        version: str,
    ) -> None:
        if kind == "activity":
            if name not in self.catalog.activities:
                raise _OrchestrationFailed(_missing_function(name, "activity"))
            self._scheduled.append(
                event(EventType.TaskScheduled, self.now, task_id, Name=name, Version="", Input=input_text)
            )
            self._activities.append(ActivityCall(task_id, name, input_text))
            return
        if name not in self.catalog.orchestrators:
            raise _OrchestrationFailed(_missing_function(name, "orchestrator"))
        # DTFx's default child id: "<parent ExecutionId>:<sequence id>".
        child_id = explicit_id or f"{self.facts.execution_id}:{task_id}"
        self._scheduled.append(
            event(
                EventType.SubOrchestrationInstanceCreated,
                self.now,
                task_id,
                Name=name,
                InstanceId=child_id,
                Input=input_text,
                Version=version,
            )
        )
        self._children.append(ChildStart(task_id, child_id, name, version, _stored_input(input_text)))

    def _schedule_timer(self, task_id: int, fire_at: datetime) -> None:
        self._scheduled.append(event(EventType.TimerCreated, self.now, task_id, FireAt=iso(fire_at)))
        self._timers.append(TimerRequest(task_id, fire_at))
