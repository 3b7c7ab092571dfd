# intent_ref: platform.execution
"""A devhost killed with SIGKILL mid-execution and started again: the execution completes, each side effect once.

Its own module: the module-scoped devhost of test_executions_e2e must be gone, since two hosts on one database
would share the `module-work` consumer checkpoint.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from tests.e2e.test_executions_e2e import (
    Platform,
    SideEffects,
    allow_local_side_effects,
    create_intent,
    detail,
    follow,
    http,
    pytestmark,
    side_effects,
    start_platform_host,
    started,
    steps_of,
)

__all__ = ["pytestmark", "side_effects"]


def test_a_killed_host_resumes_and_every_side_effect_happens_once(
    pg: Any, azurite: Any, tmp_path: Path, side_effects: SideEffects
) -> None:
    host = start_platform_host(pg, azurite, tmp_path / "devhost.log")
    crashed = Platform(host, pg.root, pg.owner_url)
    allow_local_side_effects(crashed)
    tag = uuid.uuid4().hex[:6]
    try:
        intent = create_intent(
            crashed,
            [
                {"id": "one", **http(side_effects, f"one-{tag}")},
                {"id": "pause", "action": "wait", "seconds": 3},
                {"id": "two", **http(side_effects, f"two-{tag}")},
                {"id": "three", "action": "artifact.write", "name": "done.json", "content": {"ok": True}},
            ],
        )
        execution_id = started(crashed, intent)
        deadline = time.monotonic() + 20
        while steps_of(detail(crashed, execution_id))["pause"]["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        host.kill()
        host.start()
        status, events = follow(crashed, execution_id)
        assert status == "succeeded"
        for name in (f"one-{tag}", f"two-{tag}"):
            assert len(side_effects.named(name)) == 1, name
        assert [e["type"] for e in events].count("step_completed") == 4
    finally:
        host.stop()
