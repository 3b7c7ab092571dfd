# intent_ref: platform.devhost-durable
"""Crash recovery: SIGKILL the devhost in the middle of an orchestration, restart it, and it carries on.

No activity whose completion was committed may run again; one that was running when the host died runs again
(at least once, as in Azure).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import azure.durable_functions as df
import psycopg
import pytest

from tests.e2e.conftest import DevhostFactory
from tests.e2e.durable_support import with_client

pytestmark = pytest.mark.e2e

TASK_HUB = "ConformanceHub"  # what devhost_factory configures (QP_TASK_HUB)
T = TypeVar("T")


def _poll(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.03)


def _history(owner_url: str, instance_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(owner_url) as conn:
        rows = conn.execute(
            "SELECT event FROM devhost_durable.history WHERE task_hub = %s AND instance_id = %s ORDER BY position",
            (TASK_HUB, instance_id),
        ).fetchall()
    return [row[0] for row in rows]


def _committed_steps(owner_url: str, instance_id: str) -> set[int]:
    """Steps whose completion is durably recorded: in the history, or in the inbox awaiting delivery."""
    with psycopg.connect(owner_url) as conn:
        events = [
            row[0]
            for row in conn.execute(
                "SELECT event FROM devhost_durable.history WHERE task_hub = %s AND instance_id = %s"
                " UNION ALL SELECT event FROM devhost_durable.inbox WHERE task_hub = %s AND instance_id = %s",
                (TASK_HUB, instance_id, TASK_HUB, instance_id),
            ).fetchall()
        ]
    scheduled = {e["EventId"]: e for e in events if e["EventType"] == 4 and e["Name"] == "durable_record_step"}
    completed = {e["TaskScheduledId"] for e in events if e["EventType"] == 5}
    return {json.loads(scheduled[i]["Input"])["step"] for i in completed if i in scheduled}


def _executions(log: Path) -> Counter[int]:
    return Counter(int(line) for line in log.read_text().split()) if log.exists() else Counter()


def test_orchestration_survives_sigkill_mid_activity_and_mid_timer(
    devhost_factory: DevhostFactory,
    pg: Any,
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]
    steps, log = 8, tmp_path / f"steps-{run}.log"
    host = devhost_factory()
    instance_id = with_client(
        host.base_url,
        TASK_HUB,
        lambda c: c.start_new(
            "durable_long_chain_orchestrator", None, {"run": run, "steps": steps, "sleep": 0.25, "timer_s": 1.5}
        ),
        host.host_key,
    )

    # Crash 1: while the activity chain runs (an activity is typically mid-sleep).
    _poll("three steps to start", lambda: sum(_executions(log).values()) >= 3)
    host.kill()
    # (steps whose completion is committed, how often each step had run) at the moment of each crash
    crashes = [(_committed_steps(pg.owner_url, instance_id), _executions(log))]
    assert crashes[0][0], "no step completion was committed before the crash"

    # Crash 2: while the orchestration waits on its durable timer.
    host = devhost_factory()

    def waiting_on_timer() -> bool:
        kinds = [e["EventType"] for e in _history(pg.owner_url, instance_id)]
        return 10 in kinds and 11 not in kinds  # TimerCreated, not yet TimerFired

    _poll("the timer to be created", waiting_on_timer)
    host.kill()
    crashes.append((_committed_steps(pg.owner_url, instance_id), _executions(log)))
    assert crashes[1][0] == set(range(steps // 2))

    host = devhost_factory()

    async def finished(client: df.DurableOrchestrationClient) -> Any:
        deadline = time.monotonic() + 60
        while True:
            status = await client.get_status(instance_id)
            if status and status.runtime_status.value in ("Completed", "Failed", "Terminated"):
                return status
            assert time.monotonic() < deadline, "the orchestration did not finish after the restart"
            await asyncio.sleep(0.05)

    status = with_client(host.base_url, TASK_HUB, finished, host.host_key)
    assert status.runtime_status == df.OrchestrationRuntimeStatus.Completed, status.output
    assert status.output == {"steps": [step * 10 for step in range(steps)], "squares": [0, 100, 400]}

    executions = _executions(log)
    assert set(executions) == set(range(steps))
    for committed, before in crashes:
        again = sorted(step for step in committed if executions[step] != before[step])
        assert not again, f"steps {again} ran again after their completion was committed"
    history = _history(pg.owner_url, instance_id)
    assert len([e for e in history if e["EventType"] == 11]) == 1  # the timer fired exactly once
