# intent_ref: platform.devhost-durable
"""Durable functions of the conformance app: one orchestrator per feature the local durable host must serve.

Activities keep their observable state (attempt counters, execution logs, gates) in files under
CONFORMANCE_STATE_DIR, so it survives a host restart and the tests can read and steer it.
"""

import json
import os
import time
from collections.abc import Generator
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()
Orchestration = Generator[Any, Any, Any]


def _state_dir() -> Path:
    value = os.environ.get("CONFORMANCE_STATE_DIR")
    if not value:
        raise RuntimeError("CONFORMANCE_STATE_DIR is not set")
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wait_for_gate(gate: str | None, timeout: float = 30.0) -> None:
    """Block until the test opens the gate (creates the file); lets a test decide when an activity ends."""
    if not gate:
        return
    path = _state_dir() / f"gate-{gate}"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was not opened")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- activities
@bp.event_hub_message_trigger(arg_name="event", event_hub_name="durable-starts", connection="EventHubConnection")
@bp.durable_client_input(client_name="client")
async def durable_start_from_event(event: func.EventHubEvent, client: df.DurableOrchestrationClient) -> None:
    """Start a sequence orchestration per event: an Event Hub trigger that carries the durable client binding."""
    body = json.loads(event.get_body())
    await client.start_new("durable_sequence_orchestrator", body["instance_id"], {"name": body["name"]})


@bp.activity_trigger(input_name="name")
def durable_hello(name: str) -> str:
    """Greet."""
    return f"Hello {name}"


@bp.activity_trigger(input_name="n")
def durable_square(n: int) -> int:
    """Square a number."""
    return n * n


@bp.activity_trigger(input_name="job")
def durable_flaky(job: dict) -> str:
    """Fail the first `fail_times` attempts of `key`; the attempt counter is a file, so it survives restarts."""
    _wait_for_gate(job.get("gate"))
    counter = _state_dir() / f"attempts-{job['key']}"
    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    if attempt <= int(job.get("fail_times", 0)):
        raise ValueError(f"transient failure {attempt} of {job['key']}")
    return f"{job['key']} ok on attempt {attempt}"


@bp.activity_trigger(input_name="job")
def durable_gated_echo(job: dict) -> object:
    """Return `value` once the gate is open."""
    _wait_for_gate(job.get("gate"))
    return job.get("value")


@bp.activity_trigger(input_name="message")
def durable_fail(message: str) -> str:
    """Always fail."""
    raise ValueError(message)


@bp.activity_trigger(input_name="job")
def durable_record_step(job: dict) -> int:
    """Log that step `step` of run `run` started (one line per execution), take `sleep` seconds, return step * 10."""
    with open(_state_dir() / f"steps-{job['run']}.log", "a", encoding="utf-8") as log:
        log.write(f"{job['step']}\n")
    time.sleep(float(job.get("sleep", 0)))
    return int(job["step"]) * 10


# ---------------------------------------------------------------------------------------------- orchestrators
@bp.orchestration_trigger(context_name="context")
def durable_sequence_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Two activities in sequence, the second fed by the first."""
    name = context.get_input()["name"]
    first = yield context.call_activity("durable_hello", name)
    second = yield context.call_activity("durable_hello", first)
    return [first, second]


@bp.orchestration_trigger(context_name="context")
def durable_fan_out_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Fan out n activities, fan in their results."""
    count = int(context.get_input())
    squares = yield context.task_all([context.call_activity("durable_square", i) for i in range(1, count + 1)])
    return squares


@bp.orchestration_trigger(context_name="context")
def durable_retry_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """call_activity_with_retry on an activity that fails `fail_times` times; the final error is returned."""
    job = context.get_input()
    options = df.RetryOptions(int(job["interval_ms"]), int(job["max_attempts"]))
    try:
        result = yield context.call_activity_with_retry("durable_flaky", options, job)
    except Exception as exc:  # the orchestrator sees the last attempt's failure once attempts are exhausted
        return {"error": str(exc)}
    return {"result": result}


@bp.orchestration_trigger(context_name="context")
def durable_retry_interleave_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """A retried call and a plain call whose results can land in one episode (the sequence-id ordering case)."""
    job = context.get_input()
    retried = context.call_activity_with_retry(
        "durable_flaky",
        df.RetryOptions(int(job["interval_ms"]), 3),
        {"key": job["key"], "fail_times": 1, "gate": job["gate"]},
    )
    plain = context.call_activity("durable_gated_echo", {"gate": job["gate"], "value": "x"})
    context.set_custom_status("scheduled")
    first = yield context.task_any([retried, plain])
    after = yield context.call_activity("durable_hello", "y")
    retried_result = yield retried
    return [first.result, after, retried_result]


@bp.orchestration_trigger(context_name="context")
def durable_failing_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Orchestrator code that raises after setting a custom status."""
    context.set_custom_status("about to fail")
    yield context.call_activity("durable_hello", "x")
    raise RuntimeError("user bug")


@bp.orchestration_trigger(context_name="context")
def durable_approval_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Wait for an external event; a falsy custom status set afterwards is never sent, so "waiting" sticks."""
    context.set_custom_status("waiting")
    approval = yield context.wait_for_external_event("Approval")
    context.set_custom_status({})
    greeting = yield context.call_activity("durable_hello", "approver")
    return {"approval": approval, "greeting": greeting}


@bp.orchestration_trigger(context_name="context")
def durable_timer_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """A durable timer: the replay-safe clock after it is at least the fire time."""
    started = context.current_utc_datetime
    fire_at = started + timedelta(seconds=float(context.get_input()))
    yield context.create_timer(fire_at)
    return {"fire_at": fire_at.isoformat(), "resumed_at": context.current_utc_datetime.isoformat()}


@bp.orchestration_trigger(context_name="context")
def durable_race_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """An external event racing a timer; when the event wins the timer is cancelled and work goes on."""
    job = context.get_input()
    timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=float(job["timeout_s"])))
    go = context.wait_for_external_event("Go")
    context.set_custom_status("racing")
    winner = yield context.task_any([timer, go])
    if winner is go:
        timer.cancel()
        after = yield context.call_activity("durable_gated_echo", {"gate": job.get("gate"), "value": "after"})
        return f"event:{go.result}:{after}"
    return "timeout"


@bp.orchestration_trigger(context_name="context")
def durable_child_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """A sub-orchestration that succeeds."""
    value = context.get_input()
    squared = yield context.call_activity("durable_square", value)
    return {"input": value, "squared": squared, "parent": context.parent_instance_id}


@bp.orchestration_trigger(context_name="context")
def durable_failing_child_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """A sub-orchestration whose activity fails, uncaught."""
    yield context.call_activity("durable_fail", context.get_input())
    return "unreachable"


@bp.orchestration_trigger(context_name="context")
def durable_flaky_child_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """A sub-orchestration that fails while its flaky activity does (retried by the parent)."""
    result = yield context.call_activity("durable_flaky", context.get_input())
    return result


@bp.orchestration_trigger(context_name="context")
def durable_parent_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Sub-orchestrations: one succeeds, one fails (caught), one succeeds on its second attempt."""
    job = context.get_input()
    ok = yield context.call_sub_orchestrator("durable_child_orchestrator", job["value"])
    try:
        yield context.call_sub_orchestrator("durable_failing_child_orchestrator", "child boom")
        error = None
    except Exception as exc:
        error = str(exc)
    retried = yield context.call_sub_orchestrator_with_retry(
        "durable_flaky_child_orchestrator", df.RetryOptions(200, 3), {"key": job["key"], "fail_times": 1}
    )
    return {"ok": ok, "error": error, "retried": retried}


@bp.orchestration_trigger(context_name="context")
def durable_supervisor_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Waits on a child with an explicit instance id; a terminated child surfaces as a failure."""
    try:
        result = yield context.call_sub_orchestrator(
            "durable_approval_orchestrator", None, instance_id=f"{context.instance_id}-child"
        )
    except Exception as exc:
        return {"child_failed": str(exc)}
    return {"child": result}


@bp.orchestration_trigger(context_name="context")
def durable_counter_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """continue_as_new until the counter reaches 3."""
    count = int(context.get_input())
    context.set_custom_status({"count": count})
    if count >= 3:
        return count
    yield context.call_activity("durable_hello", str(count))
    context.continue_as_new(count + 1)
    return None


@bp.orchestration_trigger(context_name="context")
def durable_nondeterministic_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Deliberately broken: reads a file (I/O!) to pick its activity, so a replay can schedule something else."""
    job = context.get_input()
    activity = (_state_dir() / f"choice-{job['key']}").read_text().strip()
    result = yield context.call_activity(activity, {"gate": job["gate"], "value": 1})
    return result


@bp.orchestration_trigger(context_name="context")
def durable_entity_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Calls an entity, which the local durable host does not support: the instance must fail loudly."""
    result = yield context.call_entity(df.EntityId("counter", "c1"), "add", 1)
    return result


@bp.orchestration_trigger(context_name="context")
def durable_long_chain_orchestrator(context: df.DurableOrchestrationContext) -> Orchestration:
    """Sequential slow steps with a timer half-way: long enough to crash the host in the middle of it."""
    job = context.get_input()
    results = []
    for step in range(int(job["steps"])):
        if step == int(job["steps"]) // 2:
            yield context.create_timer(context.current_utc_datetime + timedelta(seconds=float(job["timer_s"])))
        results.append(
            (
                yield context.call_activity(
                    "durable_record_step", {"run": job["run"], "step": step, "sleep": job["sleep"]}
                )
            )
        )
    fan_in = yield context.task_all([context.call_activity("durable_square", r) for r in results[:3]])
    return {"steps": results, "squares": fan_in}


# ---------------------------------------------------------------------------------------------- HTTP starter
@bp.route(route="durable/start/{functionName}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
async def start_durable_orchestration(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """Start an orchestrator with the request's JSON body; ?wait=ms waits for the outcome first."""
    body = req.get_body()
    instance_id = await client.start_new(req.route_params["functionName"], None, json.loads(body) if body else None)
    wait_ms = req.params.get("wait")
    if wait_ms:
        return await client.wait_for_completion_or_create_check_status_response(req, instance_id, int(wait_ms), 50)
    return client.create_check_status_response(req, instance_id)
