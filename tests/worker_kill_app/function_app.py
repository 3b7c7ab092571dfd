# intent_ref: platform.devhost-durable
"""An orchestration whose first episode, or whose activity, the test holds in its worker process to kill it there.

While `hold-<phase>` exists in CONFORMANCE_STATE_DIR, that phase appends a line to `runs-<phase>.log` and waits for
the file to go; without it, the phase runs straight through. The log tells the test when to kill the worker, and
how often the phase ran.
"""

import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _held(phase: str) -> None:
    """Log that `phase` runs; then wait while the test holds it (at most a minute, so nothing waits for ever)."""
    state = Path(os.environ["CONFORMANCE_STATE_DIR"])
    with open(state / f"runs-{phase}.log", "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + 60
    while (state / f"hold-{phase}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@app.orchestration_trigger(context_name="context")
def held_orchestrator(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    """One activity; the first episode (not a replay) is held when the test asks."""
    if not context.is_replaying:
        _held("episode")
    greeting = yield context.call_activity("held_activity", "world")
    return greeting


@app.activity_trigger(input_name="name")
def held_activity(name: str) -> str:
    """Greet, held when the test asks."""
    _held("activity")
    return f"hello {name}"


@app.orchestration_trigger(context_name="context")
def poison_orchestrator(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    """One activity that kills its worker every time it runs."""
    return (yield context.call_activity("poison_activity", "world"))


@app.activity_trigger(input_name="name")
def poison_activity(name: str) -> str:
    """Log that it ran, then take its worker process down (an input that crashes native code, say)."""
    state = Path(os.environ["CONFORMANCE_STATE_DIR"])
    with open(state / "runs-poison.log", "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()}\n")
    os._exit(1)
