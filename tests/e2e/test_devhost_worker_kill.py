# intent_ref: platform.devhost-durable
"""A language worker killed in the middle of an orchestrator episode or an activity ends nothing: the devhost takes
the worker's exit as no answer, as the Durable extension does, and runs the episode or activity again in another
worker; the orchestration completes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import azure.durable_functions as df
import pytest

from devhost.child import PROJECT_ROOT
from devhost.durable.engine import MAX_WORKER_EXITS
from tests.e2e.conftest import DevhostFactory
from tests.e2e.durable_support import wait_for_status, with_client

pytestmark = pytest.mark.e2e

APP = PROJECT_ROOT / "tests" / "worker_kill_app"
TASK_HUB = "ConformanceHub"  # what devhost_factory configures (QP_TASK_HUB)


def _runs(log: Path) -> list[int]:
    """The worker processes (pids) a phase ran in, in order."""
    return [int(line) for line in log.read_text().split()] if log.exists() else []


@pytest.mark.parametrize("phase", ["episode", "activity"])
def test_an_orchestration_completes_after_its_worker_is_killed_mid_phase(
    devhost_factory: DevhostFactory, tmp_path: Path, phase: str
) -> None:
    hold, log = tmp_path / f"hold-{phase}", tmp_path / f"runs-{phase}.log"
    hold.touch()
    # Two workers, as `make run` starts them.
    host = devhost_factory(app_dir=APP, env={"FUNCTIONS_WORKER_PROCESS_COUNT": "2"})
    instance_id = with_client(
        host.base_url, TASK_HUB, lambda c: c.start_new("held_orchestrator", None, None), host.host_key
    )
    deadline = time.monotonic() + 60
    while not _runs(log):
        assert time.monotonic() < deadline, f"the {phase} never started"
        time.sleep(0.02)
    (killed,) = _runs(log)
    os.kill(killed, signal.SIGKILL)  # a worker of the devhost this test started, held in the phase
    hold.unlink()  # the phase's next run goes straight through

    status = with_client(host.base_url, TASK_HUB, lambda c: wait_for_status(c, instance_id, timeout=60), host.host_key)
    assert status.runtime_status == df.OrchestrationRuntimeStatus.Completed, status.output
    assert status.output == "hello world"
    first, *again = _runs(log)
    assert first == killed
    assert again and killed not in again  # it ran again, in a worker that was alive


def test_an_activity_that_kills_its_worker_every_time_fails_after_a_bounded_number_of_runs(
    devhost_factory: DevhostFactory, tmp_path: Path
) -> None:
    # Taken as no answer without a bound, it ran again every second for ever, failing every other call in flight on
    # each worker it reached.
    host = devhost_factory(app_dir=APP, env={"FUNCTIONS_WORKER_PROCESS_COUNT": "2"})
    instance_id = with_client(
        host.base_url, TASK_HUB, lambda c: c.start_new("poison_orchestrator", None, None), host.host_key
    )
    status = with_client(host.base_url, TASK_HUB, lambda c: wait_for_status(c, instance_id, timeout=90), host.host_key)
    assert status.runtime_status == df.OrchestrationRuntimeStatus.Failed
    assert len(_runs(tmp_path / "runs-poison.log")) == MAX_WORKER_EXITS
