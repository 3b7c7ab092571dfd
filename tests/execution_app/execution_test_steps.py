# intent_ref: platform.execution
"""A TEST run_step activity: its behaviour comes from the step's parameters, and every call is recorded.

Parameters: `fail_times` (fail the first n attempts), `fail` (always fail), `sleep` (seconds), `gate` (block until
the test creates the file gate-<name>). Calls are appended to calls.jsonl under EXECUTION_STATE_DIR.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import azure.durable_functions as df

bp = df.Blueprint()


def _state_dir() -> Path:
    value = os.environ.get("EXECUTION_STATE_DIR")
    if not value:
        raise RuntimeError("EXECUTION_STATE_DIR is not set")
    return Path(value)


def _record(entry: dict[str, Any]) -> None:
    # One short append per line keeps concurrent activity threads from interleaving records.
    with (_state_dir() / "calls.jsonl").open("a", encoding="utf-8") as file:
        file.write(json.dumps(entry) + "\n")


@bp.activity_trigger(input_name="request")
def run_step(request: dict[str, Any]) -> dict[str, Any]:
    """Run one step attempt as its parameters say; record its start and end; echo the parameters."""
    params = request.get("params") or {}
    call = {key: request.get(key) for key in ("execution_id", "step_id", "action", "attempt")}
    call["compensation"] = bool(request.get("compensation"))
    call["params"] = params
    _record({**call, "event": "start", "at": time.time()})
    try:
        gate = params.get("gate")
        if gate:
            deadline = time.monotonic() + 20
            while not (_state_dir() / f"gate-{gate}").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(float(params.get("sleep", 0)))
        if params.get("fail") or request["attempt"] <= int(params.get("fail_times", 0)):
            raise ValueError(f"step {request['step_id']} failed on attempt {request['attempt']}")
    finally:
        _record({**call, "event": "end", "at": time.time()})
    return {"echo": params, "attempt": request["attempt"]}
