# intent_ref: platform.devhost-timers
"""Timer triggers: NCRONTAB schedules, run_on_startup and the schedule monitor's past-due run after downtime."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.functions import meta
from croniter import croniter

from devhost.component import HostContext
from devhost.hostjson import resolve_app_setting
from devhost.invoker import FunctionInvocationError
from devhost.tasks import stop_tasks

logger = logging.getLogger(__name__)

NEVER = datetime.min.replace(tzinfo=UTC)
"""`ScheduleStatus.Last` before the first scheduled run (.NET `default(DateTime)`)."""
_STOP_GRACE_SECONDS = 5.0
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class TimerScheduleError(ValueError):
    """A timerTrigger schedule is not a valid NCRONTAB expression."""


@dataclass(frozen=True)
class NcrontabSchedule:
    """An NCRONTAB expression: six fields with seconds first, or the five-field cron form."""

    expression: str

    @classmethod
    def parse(cls, expression: str) -> NcrontabSchedule:
        """Validate `expression` (after resolving a `%APP_SETTING%` reference, as the host does)."""
        expression = resolve_app_setting(expression.strip())
        fields = len(expression.split())
        if fields not in (5, 6) or not croniter.is_valid(expression, second_at_beginning=fields == 6):
            raise TimerScheduleError(
                f"{expression!r} is not an NCRONTAB expression ({{second}} {{minute}} {{hour}} {{day}} {{month}}"
                " {day-of-week}, or the same without seconds)"
            )
        return cls(expression)

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after `moment` (UTC)."""
        six = len(self.expression.split()) == 6
        iterator = croniter(self.expression, moment.astimezone(UTC), second_at_beginning=six)
        result: datetime = iterator.get_next(datetime)
        return result

    def interval_at(self, moment: datetime) -> timedelta:
        """The gap between the next two occurrences after `moment`."""
        first = self.next_after(moment)
        return self.next_after(first) - first


@dataclass(frozen=True)
class ScheduleStatus:
    """What the host's schedule monitor records per timer function: the last and next occurrence."""

    last: datetime
    next: datetime
    last_updated: datetime

    def to_json(self) -> dict[str, str]:
        """The ScheduleStatus object of the TimerInfo JSON (Newtonsoft's DateTime format)."""
        return {"Last": _dotnet(self.last), "Next": _dotnet(self.next), "LastUpdated": _dotnet(self.last_updated)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleStatus:
        """Read what to_json wrote."""
        return cls(_parse(data["Last"]), _parse(data["Next"]), _parse(data["LastUpdated"]))


class ScheduleMonitor:
    """Persists each timer's ScheduleStatus under the data folder (the host keeps it in a blob)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def load(self, function_name: str) -> ScheduleStatus | None:
        """The recorded status, or None if the timer never ran here (or the file is unreadable)."""
        path = self._path(function_name)
        try:
            return ScheduleStatus.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("ignoring unreadable timer status %s", path)
            return None

    def save(self, function_name: str, status: ScheduleStatus) -> None:
        """Write atomically, so a crash leaves the old status or the new one."""
        path = self._path(function_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(status.to_json()), encoding="utf-8")
        os.replace(temporary, path)

    def check_past_due(
        self, function_name: str, now: datetime, schedule: NcrontabSchedule
    ) -> tuple[ScheduleStatus, bool]:
        """The status to start from, and whether an occurrence was missed while the host was down."""
        status = self.load(function_name)
        if status is None:
            # Never ran: nothing can be past due yet.
            status = ScheduleStatus(NEVER, schedule.next_after(now), now)
            self.save(function_name, status)
            return status, False
        # The schedule may have changed since the status was written: an earlier expected
        # occurrence wins over the recorded one, like the host's monitor.
        expected = schedule.next_after(status.last if status.last != NEVER else status.last_updated)
        recorded = min(expected, status.next)
        return replace(status, next=recorded), now > recorded

    def _path(self, function_name: str) -> Path:
        return self._directory / f"{_UNSAFE_FILE_CHARS.sub('_', function_name)}.json"


@dataclass(frozen=True)
class TimerSpec:
    """One timerTrigger function as the host schedules it."""

    function: func.Function
    name: str
    parameter: str
    schedule: NcrontabSchedule
    run_on_startup: bool
    monitored: bool

    @classmethod
    def from_function(cls, function: func.Function) -> TimerSpec:
        """Read the trigger; use_monitor defaults to on for schedules of a minute or longer, as in Azure."""
        trigger: Any = function.get_trigger()
        schedule = NcrontabSchedule.parse(str(trigger.schedule))
        monitored = trigger.use_monitor
        if monitored is None:
            monitored = schedule.interval_at(datetime.now(UTC)) >= timedelta(minutes=1)
        return cls(
            function=function,
            name=str(function.get_function_name()),
            parameter=str(trigger.name),
            schedule=schedule,
            run_on_startup=bool(trigger.run_on_startup),
            monitored=bool(monitored),
        )


def timer_datum(status: ScheduleStatus | None, past_due: bool) -> meta.Datum:
    """The TimerInfo JSON the host sends (`func.TimerRequest` decodes it)."""
    info = {
        "Schedule": {"AdjustForDST": True},
        "ScheduleStatus": None if status is None else status.to_json(),
        "IsPastDue": past_due,
    }
    return meta.Datum(json.dumps(info), "json")


class _TimerRunner:
    """Fires one timer function: a past-due or startup run first, then each occurrence in turn."""

    def __init__(self, spec: TimerSpec, ctx: HostContext, monitor: ScheduleMonitor) -> None:
        self._spec = spec
        self._ctx = ctx
        self._monitor = monitor
        self._status: ScheduleStatus | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        spec = self._spec
        now = _utcnow()
        past_due = False
        if spec.monitored:
            self._status, past_due = self._monitor.check_past_due(spec.name, now, spec.schedule)
        if past_due:
            logger.info("timer %s is past due; running it now", spec.name)
            await self._fire(now, past_due=True)
        elif spec.run_on_startup:
            # A startup run is extra: it does not move the recorded schedule (as in the host).
            await self._invoke(past_due=False)
        occurrence = spec.schedule.next_after(_utcnow())
        while not stopping.is_set():
            delay = (occurrence - _utcnow()).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=max(delay, 0.0))
            if stopping.is_set():
                return
            await self._fire(occurrence, past_due=False)
            # Occurrences missed while the function ran are skipped, not queued up.
            occurrence = spec.schedule.next_after(max(occurrence, _utcnow()))

    async def _fire(self, occurrence: datetime, *, past_due: bool) -> None:
        await self._invoke(past_due=past_due)
        self._status = ScheduleStatus(occurrence, self._spec.schedule.next_after(_utcnow()), _utcnow())
        if self._spec.monitored:
            try:
                self._monitor.save(self._spec.name, self._status)
            except OSError:
                logger.exception("cannot record the schedule status of %s", self._spec.name)

    async def _invoke(self, *, past_due: bool) -> None:
        inputs = {self._spec.parameter: timer_datum(self._status if self._spec.monitored else None, past_due)}
        try:
            await self._ctx.invoker.invoke(self._spec.function, inputs, {})
        except FunctionInvocationError as exc:
            logger.error("Executed '%s' (Failed): %s", self._spec.name, exc.friendly, exc_info=exc.exc)
        except Exception:
            logger.exception("Executed '%s' (Failed while binding its input)", self._spec.name)


class TimerHost:
    """Runs every timerTrigger function of the app on its schedule."""

    def __init__(self, ctx: HostContext) -> None:
        self._ctx = ctx
        self._monitor = ScheduleMonitor(ctx.data_dir / "timers")
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def add_routes(self, app: web.Application) -> None:
        """Timers have no routes."""

    async def start(self) -> None:
        """Validate every schedule (a bad one fails start-up, like the host), then start the timers."""
        specs = [TimerSpec.from_function(function) for function in self._ctx.index.timers]
        self._stopping = asyncio.Event()
        self._tasks = [
            asyncio.create_task(
                _TimerRunner(spec, self._ctx, self._monitor).run(self._stopping), name=f"timer-{spec.name}"
            )
            for spec in specs
        ]
        for spec in specs:
            logger.info("timer %s: %s%s", spec.name, spec.schedule.expression, " (monitored)" if spec.monitored else "")

    async def stop(self) -> None:
        """Stop scheduling; a run still going after a grace period is cancelled and not recorded."""
        self._stopping.set()
        await stop_tasks(self._tasks, _STOP_GRACE_SECONDS)
        self._tasks = []


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _dotnet(moment: datetime) -> str:
    # Newtonsoft writes default(DateTime) without an offset and trims a zero fraction.
    if moment == NEVER:
        return "0001-01-01T00:00:00"
    return moment.astimezone(UTC).isoformat()


def _parse(text: str) -> datetime:
    if text.startswith("0001-01-01"):
        return NEVER
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
