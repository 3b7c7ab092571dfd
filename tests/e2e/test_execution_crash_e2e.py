# intent_ref: platform.execution
"""A devhost killed with SIGKILL mid-execution and started again: the execution completes, each side effect once.

Its own module: the module-scoped devhost of test_executions_e2e must be gone, since two hosts on one database
would share the `module-work` consumer checkpoint.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devhost.workers import WORKER_COUNT_SETTING
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


def worker_processes(host_pid: int) -> list[int]:
    """The host's language worker processes (its children running `devhost.worker`)."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and _parent_and_state(int(entry.name))[0] == host_pid
        and b"devhost.worker" in _command(int(entry.name))
    ]


def _parent_and_state(pid: int) -> tuple[int, str]:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # gone meanwhile
        return (0, "X")
    return int(fields[1]), fields[0]


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie or a reused pid running something else does not count)."""
    return _parent_and_state(pid)[1] not in ("X", "Z") and b"devhost.worker" in _command(pid)


@pytest.mark.parametrize("workers", [0, 2], ids=["functions-in-the-host", "two-worker-processes"])
def test_a_killed_host_resumes_and_every_side_effect_happens_once(
    pg: Any, azurite: Any, tmp_path: Path, side_effects: SideEffects, workers: int
) -> None:
    host = start_platform_host(pg, azurite, tmp_path / "devhost.log", env={WORKER_COUNT_SETTING: str(workers)})
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
        assert host.process is not None
        host_pid = host.process.pid
        pids = worker_processes(host_pid)
        assert len(pids) == workers
        host.kill()
        # A worker whose host is gone leaves at once (its socket ends), as a language worker does.
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "worker processes outlived their killed host"
            time.sleep(0.1)
        host.start()
        status, events = follow(crashed, execution_id)
        assert status == "succeeded"
        for name in (f"one-{tag}", f"two-{tag}"):
            assert len(side_effects.named(name)) == 1, name
        assert [e["type"] for e in events].count("step_completed") == 4
    finally:
        host.stop()


def _with_two_workers(pg: Any, azurite: Any, tmp_path: Path) -> Platform:
    """The platform's devhost with two worker processes, logging to tmp_path/devhost.log, allowed local calls."""
    host = start_platform_host(pg, azurite, tmp_path / "devhost.log", env={WORKER_COUNT_SETTING: "2"})
    platform = Platform(host, pg.root, pg.owner_url)
    allow_local_side_effects(platform)
    return platform


def test_a_killed_worker_process_is_started_again_and_executions_go_on(
    pg: Any, azurite: Any, tmp_path: Path, side_effects: SideEffects
) -> None:
    platform = _with_two_workers(pg, azurite, tmp_path)
    host = platform.host
    try:
        assert host.process is not None
        before = worker_processes(host.process.pid)
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(after := worker_processes(host.process.pid)) != 2 or before[0] in after:
            assert time.monotonic() < deadline, "the host did not start its killed worker again"
            time.sleep(0.2)
        assert before[1] in after  # the other one was left alone
        tag = uuid.uuid4().hex[:6]
        intent = create_intent(
            platform,
            [
                {"id": "one", **http(side_effects, f"w-{tag}")},
                {"id": "two", "action": "event.emit", "type": "x.done", "depends_on": ["one"]},
            ],
        )
        for _ in range(3):  # each worker takes its share of the calls
            status, _ = follow(platform, started(platform, intent))
            assert status == "succeeded"
        assert len(side_effects.named(f"w-{tag}")) == 3
        log = (tmp_path / "devhost.log").read_text()
        assert "exited (-9); starting it again" in log, log[-2000:]
    finally:
        host.stop()


def _holding_a_connection_to(port: int, pids: list[int]) -> int | None:
    """Which of `pids` has an established TCP connection to 127.0.0.1:`port` (read from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
            inodes.add(f"socket:[{inode}]")
    for pid in pids:
        try:
            if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
        except OSError:  # gone, or an fd closed meanwhile
            continue
    return None


def test_a_worker_killed_while_its_module_runs_is_retried_not_left_to_the_step_timeout(
    pg: Any, azurite: Any, tmp_path: Path, side_effects: SideEffects
) -> None:
    platform = _with_two_workers(pg, azurite, tmp_path)
    host = platform.host
    tag = uuid.uuid4().hex[:6]
    try:
        assert host.process is not None
        # One attempt, and a timeout far beyond the test: only a redelivery of the work can finish the step. The call
        # takes 8 s so that the kill lands while it runs: at 3 s, a machine busy enough to slow the search for the
        # process holding the call let the run end and record its result before the kill (one call, not two).
        step = {"id": "slow", **http(side_effects, f"slow-{tag}", sleep=8), "timeout_s": 600}
        execution_id = started(platform, create_intent(platform, [step]))
        deadline = time.monotonic() + 30
        while not (holder := _holding_a_connection_to(side_effects.port, worker_processes(host.process.pid))):
            assert time.monotonic() < deadline, "no worker process called the side-effect server"
            time.sleep(0.05)
        os.kill(holder, signal.SIGKILL)
        status, _ = follow(platform, execution_id)
        assert status == "succeeded"
        attempts = steps_of(detail(platform, execution_id))["slow"]["attempts"]
        assert [a["attempt"] for a in attempts] == [1]
        calls = side_effects.named(f"slow-{tag}")
        assert len(calls) == 2  # the killed run, and the retried one that took its lapsed claim over
        assert len({call.key for call in calls}) == 1  # one attempt: one idempotency key
        log = (tmp_path / "devhost.log").read_text()
        # Redelivered by the batch's retry (the kill within the batch's hold), or by the copy the batch handed back
        # (the kill after it, the module going on past the batch, ADR 0048): either way the killed run's claim lapsed
        # and a copy took the attempt over, never leaving it to the step's timeout.
        retried = "Executed 'module_worker' (Failed" in log and "retry 0 of 5" in log
        handed_back = "handed back to the hub past the batch's hold (1 going on here)" in log
        assert retried or handed_back, log[-3000:]
    finally:
        host.stop()
