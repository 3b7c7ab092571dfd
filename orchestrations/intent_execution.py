# intent_ref: platform.execution
"""The intent orchestrator (second generation): a thin adapter between durable tasks and the engine's reducer."""

# Versioning (ADR 0025): the registered name carries the generation. A change that alters the commands a recorded
# history replays into gets a new name; the previous one stays registered until no instance of it runs.

import functools
import json
from collections.abc import Generator
from typing import Any

import azure.durable_functions as df
from azure.durable_functions.models.Task import TaskBase, TaskState, TimerTask

from shared.engine import activity_trace, machine, replay_memo
from shared.engine.protocol import ORCHESTRATOR
from shared.typed_triggers import typed

bp = df.Blueprint()

# Each episode replays the history from the start; the reductions of what it replays are remembered per process.
_REPLAYS = replay_memo.ReplayMemo()

# Every activity's write is idempotent, so a transient database or hub error is simply tried again.
_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=5)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _finished(task: TaskBase, kind: str, key: Any, now: Any) -> machine.Event:
    """The event a completed durable task means to the reducer."""
    failed = task.state is TaskState.FAILED
    if kind == "activity":
        if failed:
            return machine.ActivityFailed(str(key), str(task.result), now)
        return machine.ActivityDone(str(key), _json(task.result), now)
    if kind == "event":
        return machine.EventRaised(str(key), _json(task.result), now)
    if kind == "child":
        step_id, attempt = key
        return machine.ChildEnded(step_id, attempt, _json(task.result), failed, now)
    return machine.TimerFired(now)


@typed(bp.orchestration_trigger(context_name="context"))
def intent_execution_v2(context: df.DurableOrchestrationContext) -> Generator[TaskBase, Any, Any]:
    """Input: the start request ({"execution_id", "tenant_id", "definition", "inputs", "plan", "reused"}) or
    {"machine": <state>} after continue-as-new. Output as machine.Complete says."""
    replay = _REPLAYS.begin(context.instance_id, context.current_utc_datetime, lambda: _json(context.get_input()))
    state, commands = replay.start
    waiting: list[tuple[TaskBase, str, Any]] = []
    while True:
        for command in commands:
            if isinstance(command, machine.CallActivity):
                body = activity_trace.attach(command.input.model_dump(mode="json"), state.spec)
                # The state a carrying dispatch's answer will meet, so it can carry on as this reducer would (ADR
                # 0036); a replay does not send the input again, so it is built only when the call is made.
                carry = None if context.is_replaying else machine.carry(state, command.id)
                if carry is not None:
                    body["carry"] = carry
                task = context.call_activity_with_retry(command.name.value, _RETRY, body)
                waiting.append((task, "activity", command.id))
            elif isinstance(command, machine.WaitForEvent):
                waiting.append((context.wait_for_external_event(command.name), "event", command.name))
            elif isinstance(command, machine.SetTimer):
                for task, kind, _ in waiting:
                    if kind == "timer" and isinstance(task, TimerTask) and not task.is_completed:
                        task.cancel()  # one timer serves the earliest deadline
                waiting = [entry for entry in waiting if entry[1] != "timer"]
                waiting.append((context.create_timer(command.at), "timer", None))
            elif isinstance(command, machine.StartChild):
                task = context.call_sub_orchestrator(ORCHESTRATOR, command.input, command.instance_id)
                waiting.append((task, "child", (command.step_id, command.attempt)))
            elif isinstance(command, machine.ContinueAsNew):
                _REPLAYS.forget(context.instance_id)
                context.continue_as_new(command.input)
                return None
            else:
                _REPLAYS.forget(context.instance_id)
                context.set_custom_status(state.custom_status())
                return command.result
        context.set_custom_status(state.custom_status())
        winner = yield context.task_any([task for task, _, _ in waiting])
        index = next(i for i, (task, _, _) in enumerate(waiting) if task is winner)
        _, kind, key = waiting.pop(index)
        now = context.current_utc_datetime
        mark = replay_memo.fingerprint(kind, key, now)
        state, commands = replay.reduce(state, mark, functools.partial(_finished, winner, kind, key, now))
