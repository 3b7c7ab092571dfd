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
