# intent_ref: platform.execution
"""TEST activities of the intent orchestrator: step behaviour comes from its parameters; all is recorded."""

# Step parameters: `fail_times` (fail the first n attempts), `fail` (always fail), `sleep` (seconds), `gate` (wait
# until the test creates the file gate-<name>). dispatch_steps starts each module attempt in the background on the
# host's event loop (asyncio sleeps only), which appends its start and end to calls.jsonl under EXECUTION_STATE_DIR,
# then raises the verdict event to the orchestration, as the module worker or a remote worker does. The
# orchestrator's timeout timer races that event, so a step held longer than its timeout_s times out. Every record
# (dispatch notes, outcomes, statuses) is appended to progress.jsonl in the first generation's shape (kind
# retrying, settle, execution...) and answered as the real activity's contract says. `drain()` awaits attempts still
# out. The module must not use `from __future__ import annotations`: the Functions worker reads the annotations.

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import azure.durable_functions as df

bp = df.Blueprint()

_GATE_DEADLINE_S = 20.0
_RUNNING: set["asyncio.Task[None]"] = set()


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


async def _run_attempt(execution_id: str, start: dict[str, Any]) -> dict[str, Any]:
    """Run one attempt as its parameters say; record its start and end; the verdict echoes the parameters."""
    params = start.get("params") or {}
    attempt = int(start["attempt"])
    call = {key: start.get(key) for key in ("step_id", "action", "attempt", "phase")}
    call["execution_id"] = execution_id
    call["compensation"] = start.get("phase") == "compensate"
    call["params"] = params
    _append("calls.jsonl", {**call, "event": "start", "at": time.time()})
    try:
        gate = params.get("gate")
        if gate:
            await _wait_for_gate(str(gate))
        await asyncio.sleep(float(params.get("sleep", 0)))
        if params.get("fail") or attempt <= int(params.get("fail_times", 0)):
            return {"ok": False, "error": f"step {start['step_id']} failed on attempt {attempt}", "retryable": True}
        return {"ok": True, "output": {"echo": params, "attempt": attempt}}
    finally:
        _append("calls.jsonl", {**call, "event": "end", "at": time.time()})


async def _attempt(client: df.DurableOrchestrationClient, execution_id: str, start: dict[str, Any]) -> None:
    verdict = await _run_attempt(execution_id, start)
    event = f"{start['phase']}:{start['step_id']}:{start['attempt']}"
    await client.raise_event(execution_id, event, verdict)


async def drain() -> None:
    """Await the attempts still out, so their events are raised on the loop that started them."""
    while _RUNNING:
        await asyncio.gather(*list(_RUNNING), return_exceptions=True)


@bp.activity_trigger(input_name="request")
@bp.durable_client_input(client_name="client")
async def dispatch_steps(request: dict[str, Any], client: df.DurableOrchestrationClient) -> dict[str, Any]:
    """Record the batch's notes, start its module attempts in the background, record its status last."""
    execution_id = str(request["execution_id"])
    for note in request.get("notes") or []:
        _append("progress.jsonl", {**note, "execution_id": execution_id, "at": time.time()})
    for start in request.get("starts") or []:
        if start["kind"] != "module":
            raise ValueError(f"the test app runs module steps only, not {start['kind']!r}")
        task = asyncio.get_running_loop().create_task(_attempt(client, execution_id, start))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)
    status = request.get("status")
    if status is not None:
        _append("progress.jsonl", {"kind": "execution", "status": status, "at": time.time()})
    return {"status": status or "running", "cancel_requested": False, "refused": False, "children": {}}


@bp.activity_trigger(input_name="request")
def record_outcomes(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Record each observed outcome as a settle; answer the verdicts (the first applied is the one recorded)."""
    verdicts = []
    for outcome in request["outcomes"]:
        _append("progress.jsonl", {"kind": "settle", **outcome, "at": time.time()})
        if outcome.get("ok"):
            verdicts.append({"ok": True, "output": outcome.get("output")})
        else:
            verdicts.append(
                {"ok": False, "error": outcome.get("error"), "retryable": True, "state": outcome.get("state")}
            )
    return verdicts


@bp.activity_trigger(input_name="request")
def record_status(request: dict[str, Any]) -> dict[str, Any]:
    """Record the execution's move; answer where it is."""
    _append("progress.jsonl", {**request, "kind": "execution", "at": time.time()})
    return {"status": request["status"], "cancel_requested": False}
