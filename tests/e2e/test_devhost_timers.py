# intent_ref: platform.devhost-timers
"""The devhost's timer triggers, in-process: NCRONTAB schedules, TimerRequest decoding, past-due after downtime."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from devhost.component import HostContext
from devhost.invoker import Invoker
from devhost.loader import build_index
from devhost.timers import NcrontabSchedule, ScheduleStatus, TimerHost, TimerScheduleError, TimerSpec
from tests.e2e.conformance_index import CONFORMANCE_APP, conformance_index

pytestmark = pytest.mark.e2e

TIMER = "on_conformance_timer"


def records(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / f"{TIMER}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def eventually_count(state_dir: Path, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Wait until the timer has recorded at least `count` runs."""
    deadline = time.monotonic() + timeout
    while len(found := records(state_dir)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"the timer ran {len(found)} time(s), expected {count} within {timeout}s")
        await asyncio.sleep(0.05)
    return found


def test_ncrontab_accepts_six_and_five_fields_and_rejects_others() -> None:
    start = datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)
    assert NcrontabSchedule.parse("*/5 * * * * *").next_after(start) == start.replace(second=5)
    assert NcrontabSchedule.parse("0 */5 * * * *").next_after(start) == start.replace(minute=5, second=0)
    assert NcrontabSchedule.parse("*/5 * * * *").next_after(start) == start.replace(minute=5, second=0)
    for bad in ("", "* * * *", "61 * * * * *", "not a schedule", "* * * * * * *"):
        with pytest.raises(TimerScheduleError):
            NcrontabSchedule.parse(bad)


def test_use_monitor_defaults_to_schedules_of_a_minute_or_longer() -> None:
    app = func.FunctionApp()

    @app.timer_trigger(arg_name="t", schedule="*/10 * * * * *")
    def frequent(t: func.TimerRequest) -> None: ...

    @app.timer_trigger(arg_name="t", schedule="0 */5 * * * *", run_on_startup=True)
    def hourly(t: func.TimerRequest) -> None: ...

    specs = {s.name: s for s in (TimerSpec.from_function(f) for f in build_index(app).timers)}
    assert (specs["frequent"].monitored, specs["frequent"].run_on_startup) == (False, False)
    assert (specs["hourly"].monitored, specs["hourly"].run_on_startup) == (True, True)


def test_timer_fires_repeatedly_then_once_past_due_after_a_restart_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir, data_dir = tmp_path / "state", tmp_path / "data"
    state_dir.mkdir()
    monkeypatch.setenv("CONFORMANCE_STATE_DIR", str(state_dir))
    status_file = data_dir / "timers" / f"{TIMER}.json"

    async def run_host() -> tuple[TimerHost, Invoker]:
        invoker = Invoker(str(CONFORMANCE_APP))
        ctx = HostContext(conformance_index(), invoker, "unused://", data_dir, "http://127.0.0.1:0", "Hub")
        host = TimerHost(ctx)
        await host.start()
        return host, invoker

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        host, invoker = await run_host()
        try:
            before = await eventually_count(state_dir, 3)
        finally:
            await host.stop()
            invoker.shutdown()
        # Downtime: wait until the recorded next occurrence has passed, so it is missed.
        status = ScheduleStatus.from_json(json.loads(status_file.read_text()))
        deadline = time.monotonic() + 5
        while datetime.now(UTC) <= status.next + timedelta(milliseconds=200):
            assert time.monotonic() < deadline, "the recorded next occurrence is too far away"
            await asyncio.sleep(0.05)
        seen = len(records(state_dir))
        host, invoker = await run_host()
        try:
            after = (await eventually_count(state_dir, seen + 3))[seen:]
        finally:
            await host.stop()
            invoker.shutdown()
        return before, after

    before, after = asyncio.run(scenario())
    for record in before + after:
        # What func.TimerRequest decoded from the host's TimerInfo JSON.
        assert record["schedule"] == {"AdjustForDST": True}
        assert set(record["schedule_status"]) == {"Last", "Next", "LastUpdated"}
    assert [r["past_due"] for r in before] == [False, False, False]
    assert before[0]["schedule_status"]["Last"] == "0001-01-01T00:00:00"  # never ran before
    # Each later run's status names the previous occurrence as Last: distinct whole seconds, in order.
    lasts = [datetime.fromisoformat(r["schedule_status"]["Last"]) for r in before[1:]]
    assert lasts[0] < lasts[1] and all(last.microsecond == 0 for last in lasts)

    # After the gap: exactly one past-due run, at once, whose status shows the missed occurrence.
    assert [r["past_due"] for r in after] == [True, False, False]
    missed = datetime.fromisoformat(after[0]["schedule_status"]["Next"])
    assert missed < datetime.fromisoformat(after[0]["at"])
    recorded = ScheduleStatus.from_json(json.loads(status_file.read_text()))
    assert recorded.last > missed and recorded.next > recorded.last
