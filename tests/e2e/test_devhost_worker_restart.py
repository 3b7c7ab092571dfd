# intent_ref: platform.devhost
"""The devhost's worker processes: an invocation sent while a worker is down waits for its restart, never for ever."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from azure.functions import meta

from devhost.workers import WorkerPool
from tests.e2e.conformance_index import CONFORMANCE_APP, conformance_index

pytestmark = pytest.mark.e2e


def _workers_of(pid: int) -> list[int]:
    """This process's `devhost.worker` children."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if parent == pid and b"devhost.worker" in command:
            children.append(int(entry.name))
    return children


def test_an_invocation_sent_while_the_worker_restarts_waits_for_it() -> None:
    function = conformance_index().functions["on_conformance_text"]

    async def scenario() -> list[int]:
        pool = WorkerPool(CONFORMANCE_APP, 1, lambda: "{}")
        await pool.start()
        try:
            (first,) = _workers_of(os.getpid())
            os.kill(first, signal.SIGKILL)
            # Within the restart delay: the host has seen the worker go, and has not started the next one.
            await asyncio.sleep(0.5)
            result = await asyncio.wait_for(pool.invoke(function, {"event": meta.Datum("hello", "string")}), 60)
            assert result is None  # the function ran (it returns nothing) in the restarted worker
            return [first, *_workers_of(os.getpid())]
        finally:
            await pool.stop()

    first, *now = asyncio.run(scenario())
    assert len(now) == 1 and now[0] != first


_BREAKABLE_APP = """
import os

import azure.functions as func

if os.path.exists(os.environ["QP_TEST_BREAK_APP"]):
    raise RuntimeError("this app does not import while the marker exists")

app = func.FunctionApp()
"""


def test_a_worker_that_cannot_import_the_app_is_started_again_less_and_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app_dir, marker = tmp_path / "app", tmp_path / "broken"
    app_dir.mkdir()
    (app_dir / "function_app.py").write_text(_BREAKABLE_APP, encoding="utf-8")
    monkeypatch.setenv("QP_TEST_BREAK_APP", str(marker))

    def delays() -> list[str]:
        return [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "starting it again" in r.getMessage()]

    async def scenario() -> list[int]:
        pool = WorkerPool(app_dir, 1, lambda: "{}")
        await pool.start()
        try:
            marker.touch()  # from now on a new worker fails to import the app
            (first,) = _workers_of(os.getpid())
            os.kill(first, signal.SIGKILL)
            deadline = asyncio.get_running_loop().time() + 60
            while len(delays()) < 4:
                assert asyncio.get_running_loop().time() < deadline, delays()
                await asyncio.sleep(0.1)
            marker.unlink()  # fixed: the next start (after the longest wait so far) serves again
            while not (pool._workers[0].ready is not None and pool._workers[0].ready.done()):
                assert asyncio.get_running_loop().time() < deadline, delays()
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            return _workers_of(os.getpid())
        finally:
            await pool.stop()

    with caplog.at_level("ERROR", logger="devhost.workers"):
        serving = asyncio.run(scenario())
    # The worker that served is started again after a second; each start that then fails waits twice as long.
    assert delays() == ["1 s", "1 s", "2 s", "4 s"]
    assert len(serving) == 1
