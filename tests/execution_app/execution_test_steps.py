# intent_ref: platform.execution
"""TEST dispatch_step and record_progress activities: step behaviour comes from its parameters; all is recorded."""

# Step parameters: `fail_times` (fail the first n attempts), `fail` (always fail), `sleep` (seconds), `gate` (wait
# until the test creates the file gate-<name>). dispatch_step runs the attempt inline, on the host's event loop
# (asyncio sleeps only), appends its start and end to calls.jsonl under EXECUTION_STATE_DIR, then raises the
# verdict event to the orchestration, as the module worker or a remote worker does. The orchestrator's timeout timer
# races that event, so a step held longer than its timeout_s times out. record_progress appends every bookkeeping
# write to progress.jsonl and answers as the real activity's contract says.
# The module must not use `from __future__ import annotations`: the Functions worker reads the annotations.

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import azure.durable_functions as df

bp = df.Blueprint()

_GATE_DEADLINE_S = 20.0


def _state_dir() -> Path:
    value = os.environ.get("EXECUTION_STATE_DIR")
    if not value:
        raise RuntimeError("EXECUTION_STATE_DIR is not set")
    return Path(value)


def _append(name: str, entry: dict[str, Any]) -> None:
    # One short append per line keeps concurrent writers from interleaving records.
    with (_state_dir() / name).open("a", encoding="utf-8") as file:
        file.write(json.dumps(entry) + "\n")


async def _wait_for_gate(gate: str) -> None:
    """Poll for the gate file without blocking the host's event loop (give up after a deadline, as before)."""
    path = _state_dir() / f"gate-{gate}"
    deadline = time.monotonic() + _GATE_DEADLINE_S
    while not path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def _run_attempt(request: dict[str, Any]) -> dict[str, Any]:
    """Run one attempt as its parameters say; record its start and end; the verdict echoes the parameters."""
    params = request.get("params") or {}
    attempt = int(request["attempt"])
    call = {key: request.get(key) for key in ("execution_id", "step_id", "action", "attempt", "phase")}
    call["compensation"] = request.get("phase") == "compensate"
    call["params"] = params
    _append("calls.jsonl", {**call, "event": "start", "at": time.time()})
    try:
        gate = params.get("gate")
        if gate:
            await _wait_for_gate(str(gate))
        await asyncio.sleep(float(params.get("sleep", 0)))
        if params.get("fail") or attempt <= int(params.get("fail_times", 0)):
            return {"ok": False, "error": f"step {request['step_id']} failed on attempt {attempt}", "retryable": True}
        return {"ok": True, "output": {"echo": params, "attempt": attempt}}
    finally:
        _append("calls.jsonl", {**call, "event": "end", "at": time.time()})


@bp.activity_trigger(input_name="request")
@bp.durable_client_input(client_name="client")
async def dispatch_step(request: dict[str, Any], client: df.DurableOrchestrationClient) -> dict[str, Any]:
    """Run the step attempt, then raise its verdict as the event `<phase>:<step_id>:<attempt>`."""
    verdict = await _run_attempt(request)
    event = f"{request['phase']}:{request['step_id']}:{request['attempt']}"
    await client.raise_event(str(request["execution_id"]), event, verdict)
    return {"step_id": request["step_id"], "phase": request["phase"], "attempt": request["attempt"]}


@bp.activity_trigger(input_name="request")
def record_progress(request: dict[str, Any]) -> Any:
    """Record one bookkeeping write; answer as the contract says (execution: its status, settle: the verdict)."""
    _append("progress.jsonl", {**request, "at": time.time()})
    kind = request["kind"]
    if kind == "execution":
        return {"status": request["status"], "cancel_requested": False}
    if kind == "settle":
        if request.get("ok"):
            return {"ok": True, "output": request.get("output")}
        return {"ok": False, "error": request.get("error"), "retryable": True, "state": request.get("state")}
    if kind in ("skipped", "retrying", "abandon", "step_failed", "begin", "approval_requested"):
        return None
    raise ValueError(f"the test app does not record progress of kind {kind!r}")
