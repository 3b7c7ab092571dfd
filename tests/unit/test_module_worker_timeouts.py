# intent_ref: platform.execution
"""How long the module worker lets one attempt of a built-in module run."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from shared.engine.protocol import WorkItem
from shared.engine.worker import MAX_ATTEMPT_RUN_S, attempt_timeout

ROOT = Path(__file__).resolve().parents[2]


def _item(timeout_s: int | None, action: str = "http.wait_healthy") -> WorkItem:
    return WorkItem(
        tenant_id=uuid.uuid4(),
        execution_id=uuid.uuid4(),
        step_id="wait",
        phase="run",
        attempt=1,
        action=action,
        params={},
        remote=False,
        timeout_s=timeout_s,
    )


def test_an_attempt_runs_at_most_fifty_minutes_inside_the_hosts_function_timeout() -> None:
    # A step may allow hours; past functionTimeout the host restarts the worker process and everything in it.
    assert attempt_timeout(_item(7200)) == MAX_ATTEMPT_RUN_S == 3000
    assert attempt_timeout(_item(120)) == 120
    assert attempt_timeout(_item(None, "verify-deployment")) == 900  # the module's own default, under the cap
    hours, minutes, seconds = (
        int(part) for part in json.loads((ROOT / "host.json").read_text())["functionTimeout"].split(":")
    )
    assert MAX_ATTEMPT_RUN_S + 5 * 60 <= hours * 3600 + minutes * 60 + seconds  # a batch's last item ends well inside
