# intent_ref: platform.devhost-durable
"""The dispatcher: runs orchestrator episodes (one per instance at a time) and activities, each one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from azure.functions import meta
from psycopg import AsyncCursor
from psycopg.rows import DictRow

from devhost.component import HostContext
from devhost.durable.episode import Bookkeeping, Catalog, Episode, EpisodeResult, InstanceFacts
from devhost.durable.lifecycle import (
    ParentLink,
    new_execution_id,
    notify_parent,
    queue_execution_started,
    start_instance,
    utcnow,
)
from devhost.durable.protocol import (
    EventType,
    JsonDict,
    RuntimeStatus,
    event,
    extract_out_of_proc_state,
    iso,
    sdk_event_json,
)
from devhost.durable.store import Conn, Database, Instance, Store, WorkItem
from devhost.invoker import FunctionInvocationError
from devhost.loader import trigger_of
from devhost.workers import worker_exited
from shared.db.pipeline_errors import statement_error

logger = logging.getLogger(__name__)

K = TypeVar("K")
_RUNNABLE = frozenset({RuntimeStatus.Pending, RuntimeStatus.Running, RuntimeStatus.ContinuedAsNew})
SAFETY_POLL_S = 2.0
"""How often the dispatcher looks for work nobody woke it for (a lost notification); timers wake it on time."""
_KEPT_HISTORIES = 1024
"""Histories of running instances kept between episodes (least recently run dropped first)."""


MAX_WORKER_EXITS = 5
"""Worker exits one episode or activity is run through before it counts as the call's failure: an input that kills
its worker every time (os._exit, a native crash) would otherwise run again every second for ever, failing every
other call in flight on each worker it reaches."""


class _NoAnswer(Exception):
    """The worker process running an orchestrator or activity exited before answering: nothing is known of the call,
    so nothing is recorded and it runs again (the Durable extension retries a work item after a worker crash)."""


@dataclass
class _KeptHistory:
    """An execution's committed history as this host last saw it, and the same serialised as the SDK gets it.

    One host runs a task hub (the lease), so only its own episodes and management calls extend a history; the
    store is still asked for events past the kept ones every episode, so a management call's are never missed.
    """

    execution_id: str
    events: list[JsonDict] = field(default_factory=list)
    played: list[str] = field(default_factory=list)

    def extend(self, events: list[JsonDict]) -> None:
        self.events.extend(events)
        self.played.extend(sdk_event_json(e, played=True) for e in events)


class Engine:
    """Background work of the durable host, driven by the store: whatever is persisted is eventually done."""

    def __init__(
        self,
        ctx: HostContext,
        db: Database,
        store: Store,
        *,
        max_episodes: int = 4,
        max_activities: int = 8,
        poll_interval: float = SAFETY_POLL_S,
        retry_delay: float = 1.0,
    ) -> None:
        self._ctx, self._db, self._store = ctx, db, store
        self._max_episodes, self._max_activities = max_episodes, max_activities
        self._poll_interval, self._retry_delay = poll_interval, retry_delay
        self._wake = asyncio.Event()
        self._episodes: dict[str, asyncio.Task[None]] = {}
        self._activities: dict[int, asyncio.Task[None]] = {}
        self._cooldown: dict[str, float] = {}  # instance id -> monotonic time before which it is not retried
        self._worker_exits: dict[str, int] = {}  # episode (instance id) or activity (work item id) -> exits so far
        self._loop_task: asyncio.Task[None] | None = None
        self._histories: OrderedDict[str, _KeptHistory] = OrderedDict()
        # A finished episode or activity starts a dispatcher pass only when something may wait for one: work
        # left behind by a limit (backlog), or an episode that did more than queue activities it started itself.
        self._backlog = False
        self._instances_wait = False  # runnable instances were left for want of an episode slot
        self._work_waits = False  # queued activities were left for want of an activity slot
        self._quiet: set[object] = set()
        self._woken_while_running: set[object] = set()  # instances given a message while their episode ran

    @property
    def catalog(self) -> Catalog:
        return Catalog(orchestrators=self._ctx.index.orchestrators, activities=self._ctx.index.activities)

    def wake(self) -> None:
        """Something was persisted that may be runnable now; dispatch without waiting for the poll."""
        self._wake.set()

    def wake_instance(self, instance_id: str) -> None:
        """A message for `instance_id` was committed: run its episode now if one may start, else dispatch.

        Skipping the dispatcher's pass takes its two statements and its turn on the loop off the path from a
        result to the episode that consumes it. The episode itself reads what is due and ends at once when
        nothing is (suspended, finished, a message not yet visible); one already running is followed by a pass.
        While instances wait for a slot (a backlog), the pass decides, oldest message first: a busy instance woken
        by each of its results took every slot that came free, and an instance whose message came first waited.
        """
        if (
            self._loop_task is None
            or self._instances_wait
            or instance_id in self._episodes
            or instance_id in self._cooldown
            or len(self._episodes) >= self._max_episodes
        ):
            if instance_id in self._episodes:
                # The running episode may have read its messages before this one: its end must be followed by a
                # pass even if it ends plain (the pass woken now leaves out the running instance). Messages that
                # come otherwise (a timer, a child's end, another writer's) are marked by the pass itself.
                self._woken_while_running.add(instance_id)
            self._backlog = self._backlog or len(self._episodes) >= self._max_episodes
            self._instances_wait = self._instances_wait or len(self._episodes) >= self._max_episodes
            self._wake.set()
            return
        self._spawn(self._episodes, instance_id, self._guarded_episode(instance_id), f"episode {instance_id}")

    def on_notify(self, task_hub: str | None, pid: int | None) -> None:
        """A NOTIFY of the store's triggers (or the listener reconnected: `None`): wake for another writer's work.

        This host's own writes wake it in-process already, so their notifications are ignored.
        """
        if task_hub is None or (task_hub == self._store.hub and pid not in self._db.backend_pids):
            self._wake.set()

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name="durable-dispatcher")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop dispatching; let running episodes commit, abandon activities (they run again on the next start)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        for task in self._activities.values():
            task.cancel()
        pending = [*self._episodes.values(), *self._activities.values()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is runnable or running (future timers excepted); for tests and tooling."""
        deadline = time.monotonic() + timeout
        while True:
            if not self._episodes and not self._activities:
                async with self._db.connection() as conn:
                    runnable = await self._store.runnable(conn, utcnow(), [], 1)
                    work = await self._store.pending_work(conn, [], 1)
                if not runnable and not work and not self._episodes and not self._activities:
                    return
                self.wake()
            if time.monotonic() > deadline:
                raise TimeoutError("the durable host did not become idle")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ dispatching
    async def _dispatch_loop(self) -> None:
        # Woken in-process by whatever this host persists, by NOTIFY for other writers, and at the next timer's due
        # time; the poll is only a safety net for a wake-up that got lost.
        while True:
            self._wake.clear()
            sleep = self._poll_interval
            try:
                sleep = await self._dispatch()
            except Exception:  # e.g. the database restarts: keep the loop alive and try again
                logger.exception("durable dispatcher pass failed")
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that meets a wake-up, and `stop`
            # then waited for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sleep):
                    await self._wake.wait()

    async def _dispatch(self) -> float:
        """Start what is runnable; return how long to sleep unless woken (until the next timer falls due)."""
        now = utcnow()
        clock = time.monotonic()
        self._cooldown = {k: v for k, v in self._cooldown.items() if v > clock}
        # Not pipelined: on a busy machine the pipeline's client-side cost outweighs a saved local round trip.
        episode_room = max(self._max_episodes - len(self._episodes), 0)
        work_room = max(self._max_activities - len(self._activities), 0)
        async with self._db.connection() as conn:
            # One more of each than there is room for: if it comes, work waits for a slot (a backlog).
            found = await self._store.dispatchable(
                conn,
                now,
                running_episodes=[*self._episodes, *self._cooldown],
                episode_limit=episode_room + 1,
                running_work=list(self._activities),
                work_limit=work_room + 1,
            )
        ids, items, due = found.instances, found.work, found.due
        self._instances_wait, self._work_waits = len(ids) > episode_room, len(items) > work_room
        self._backlog = self._instances_wait or self._work_waits
        for instance_id in found.running_with_due:
            # A message came (a timer fell due, a child ended, another writer raised one) while the instance's
            # episode ran: that episode may have read its messages before, so its end must be followed by a pass.
            if instance_id in self._episodes:
                self._woken_while_running.add(instance_id)
            elif instance_id not in self._cooldown:
                self.wake()  # its episode ended while this pass read: the next pass finds it runnable
        ids, items = ids[:episode_room], items[:work_room]
        for instance_id in ids:
            if instance_id in self._episodes:
                continue  # started by wake_instance while this pass read: one episode per instance at a time
            self._spawn(self._episodes, instance_id, self._guarded_episode(instance_id), f"episode {instance_id}")
        for item in items:
            self._start_activity(item)  # unless the episode that queued it started it while this pass read
        sleep = self._poll_interval
        if due is not None:
            sleep = min(sleep, max(0.0, (due - utcnow()).total_seconds()))
        if self._cooldown:
            sleep = min(sleep, max(0.0, min(self._cooldown.values()) - time.monotonic()))
        return sleep

    def _spawn(
        self,
        tasks: dict[K, asyncio.Task[None]],
        key: K,
        work: Coroutine[Any, Any, None],
        name: str,
        *,
        quiet: bool = False,
    ) -> None:
        """Run `work` in the background, tracked under `key` until it ends, then dispatch again unless `quiet`
        (an activity: its result starts its episode itself) or marked quiet meanwhile (a plain episode), and
        nothing waits for a slot."""
        task = asyncio.create_task(work, name=name)
        tasks[key] = task
        if quiet:
            self._quiet.add(key)

        def done(_: asyncio.Task[None]) -> None:
            tasks.pop(key, None)
            quiet = key in self._quiet and key not in self._woken_while_running
            self._quiet.discard(key)
            self._woken_while_running.discard(key)
            if not quiet or self._backlog:
                self.wake()

        task.add_done_callback(done)

    # ------------------------------------------------------------------ episodes
    async def _guarded_episode(self, instance_id: str) -> None:
        try:
            await self._run_episode(instance_id)
        except asyncio.CancelledError:
            raise
        except _NoAnswer as exc:
            # Rolled back: the messages are still there, and the episode runs again once the cooldown is over, in a
            # restarted worker or another one; its end wakes the dispatcher (no episode that rolled back is quiet).
            logger.warning(
                "the worker running the episode of %s exited (%s); running it again in %.1fs",
                instance_id,
                exc,
                self._retry_delay,
            )
            self._cooldown[instance_id] = time.monotonic() + self._retry_delay
        except Exception as exc:
            # A host bug or a database error: the transaction rolled back, so the messages are still there. Logged
            # with the failed statement's error where the pipeline reported the aborted COMMIT after it instead.
            cause = statement_error(exc) if isinstance(exc, psycopg.errors.PipelineAborted) else exc
            logger.error(
                "durable episode of %s failed; retrying in %.1fs", instance_id, self._retry_delay, exc_info=cause
            )
            self._cooldown[instance_id] = time.monotonic() + self._retry_delay

    async def _run_episode(self, instance_id: str) -> None:
        # Taken out while the episode runs and put back only once it committed: a rolled-back episode leaves
        # nothing behind that the store does not have.
        kept = self._histories.pop(instance_id, None)
        known = len(kept.events) if kept is not None else 0
        now = utcnow()
        # Pipelined: the reads are one round trip, the writes and the commit another. psycopg.AsyncTransaction, not
        # conn.transaction(): in a pipeline the latter syncs around its block, a third round trip for the COMMIT. A
        # write that fails surfaces at the pipeline's sync (the queued COMMIT is skipped) and the pool rolls back.
        added = None
        async with self._db.connection() as conn:
            async with conn.pipeline(), psycopg.AsyncTransaction(conn):
                instance, messages, rows = await self._store.episode_input(conn, instance_id, now, known)
                if instance is None or instance.runtime_status not in _RUNNABLE:
                    return
                if kept is None or kept.execution_id != instance.execution_id or (rows and rows[0][0] != known):
                    # Nothing kept, or it belongs to an execution that has ended: the whole history from the store.
                    kept = _KeptHistory(instance.execution_id)
                    if known > 0:
                        rows = await self._store.history_since(conn, instance_id, 0)
                kept.extend([event for _, event in rows])
                result: EpisodeResult | None = None
                if messages:
                    episode = Episode(
                        facts=InstanceFacts(
                            instance.instance_id,
                            instance.execution_id,
                            instance.name,
                            instance.input_json,
                            instance.parent_instance_id,
                        ),
                        past=kept.events,
                        played=kept.played,
                        messages=messages,
                        book=instance.book,
                        now=now,
                        catalog=self.catalog,
                    )
                    if episode.has_events:
                        state, failure = await self._invoke_orchestrator(instance.name, episode.context(), instance_id)
                        result = episode.finish(state, failure, utcnow())
                        added = await self._commit(conn, instance, result, now, history_at=len(kept.events))
                    await self._store.delete_messages(conn, [m.id for m in messages])
            # Committed (the pipeline synced): its new work items can start without a dispatcher pass.
            work = await self._store.added_work(added)
        assert kept is not None  # the transaction swallows only psycopg.Rollback, which nothing here raises
        self._start_added(instance_id, result, work)
        if result is not None:
            if result.status.is_terminal or result.status == RuntimeStatus.ContinuedAsNew:
                return  # no further episode of this execution
            kept.extend(result.history)
        self._histories[instance_id] = kept
        while len(self._histories) > _KEPT_HISTORIES:
            self._histories.popitem(last=False)

    async def _invoke_orchestrator(
        self, name: str, context: str, instance_id: str
    ) -> tuple[JsonDict | None, str | None]:
        """Run the orchestrator once; return its OrchestratorState, or the failure it could not describe."""
        function = self._ctx.index.orchestrators.get(name)
        if function is None:
            return None, f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator function."
        try:
            inputs = {str(trigger_of(function).name): meta.Datum(context, "string")}
            datum = await self._ctx.invoker.invoke(function, inputs)
        except FunctionInvocationError as exc:
            if worker_exited(exc):  # no answer, not the orchestrator's failure: the episode rolls back
                self._no_answer(f"episode:{instance_id}", exc)
            # Orchestrator code raised: the SDK embeds its state (actions, customStatus, error) in the message.
            state = extract_out_of_proc_state(str(exc.exc))
            return (state, None) if state is not None else (None, exc.friendly)
        except Exception as exc:  # the worker side of the call failed: fail the instance rather than retry forever
            return None, f"{type(exc).__name__}: {exc}"
        self._worker_exits.pop(f"episode:{instance_id}", None)
        try:
            state = json.loads(datum.value) if datum is not None and isinstance(datum.value, str) else None
        except json.JSONDecodeError:
            state = None
        return (state, None) if isinstance(state, dict) else (None, "the orchestrator returned no OrchestratorState")

    def _start_added(self, instance_id: str, result: EpisodeResult | None, work: list[WorkItem]) -> None:
        """Start the activities a committed episode queued, as far as there is room; the episode's end needs no
        dispatcher pass when that was all it did (no timer, child or end to attend to, nothing left queued).
        While queued work waits for a slot, the pass starts it, oldest first: these do not go ahead of it."""
        room = 0 if self._work_waits else self._max_activities - len(self._activities)
        for item in work[: max(room, 0)]:
            self._start_activity(item)  # unless a dispatcher pass read it first
        plain = (
            result is not None
            and result.status == RuntimeStatus.Running
            and not result.timers
            and not result.children
            and len(work) == len(result.activities)
            and len(work) <= room
        )
        if plain:
            self._quiet.add(instance_id)

    def _start_activity(self, item: WorkItem) -> None:
        """Run a queued activity once; its end needs no dispatcher pass (its result starts its episode)."""
        if item.id not in self._activities:
            self._spawn(self._activities, item.id, self._run_activity(item), f"activity {item.name}", quiet=True)

    async def _commit(
        self, conn: Conn, instance: Instance, result: EpisodeResult, now: datetime, *, history_at: int
    ) -> AsyncCursor[DictRow] | None:
        """Persist the episode; the cursor of the work items it queued (read it once committed)."""
        store, instance_id, execution_id = self._store, instance.instance_id, instance.execution_id
        instance.updated_at = utcnow()
        if result.custom_status_set:
            instance.custom_status_json = result.custom_status_json
        if result.status == RuntimeStatus.ContinuedAsNew:
            await self._continue_as_new(conn, instance, result.continue_as_new_input, now)
            return None
        await store.append_history(conn, instance_id, result.history, start=history_at)
        added = await store.add_work(conn, instance_id, execution_id, result.activities, now)
        for timer in result.timers:
            fired = event(EventType.TimerFired, timer.fire_at, TimerId=timer.task_id, FireAt=iso(timer.fire_at))
            await store.send(conn, instance_id, execution_id, fired, timer.fire_at, task_id=timer.task_id)
        await store.cancel_timers(conn, instance_id, execution_id, result.canceled_timers)
        for child in result.children:
            parent = ParentLink(instance.name, instance_id, execution_id, child.task_id)
            created = await start_instance(
                store,
                conn,
                instance_id=child.instance_id,
                name=child.name,
                version=child.version,
                input_json=child.input_json,
                now=now,
                parent=parent,
            )
            if not created:
                refused = event(
                    EventType.SubOrchestrationInstanceFailed,
                    now,
                    TaskScheduledId=child.task_id,
                    Reason=f"An orchestration with instance ID '{child.instance_id}' already exists and is not in "
                    "a terminal state.",
                    Details=None,
                )
                await store.send(conn, instance_id, execution_id, refused, now, task_id=child.task_id)
        instance.runtime_status = result.status
        if result.status == RuntimeStatus.Failed:
            logger.warning("orchestration %s (%s) failed: %s", instance_id, instance.name, result.failure_reason)
        if result.status.is_terminal:
            instance.output_json = result.output_json
            await store.drop_inbox(conn, instance_id)
            await notify_parent(
                store, conn, instance, now, reason=result.failure_reason, details=result.failure_details
            )
        await store.save(conn, instance)
        return added

    async def _continue_as_new(self, conn: Conn, instance: Instance, input_json: str | None, now: datetime) -> None:
        """Start a fresh execution: new ExecutionId, empty history, counters reset; undelivered results dropped."""
        await self._store.clear_history(conn, instance.instance_id)
        # Results and timers of the old execution are dropped when delivered (execution id mismatch); external
        # events raised from now on reach the new execution.
        instance.execution_id = new_execution_id()
        instance.input_json = input_json
        instance.output_json = None
        instance.book = Bookkeeping()
        instance.runtime_status = RuntimeStatus.ContinuedAsNew
        await queue_execution_started(self._store, conn, instance, now)
        await self._store.save(conn, instance)

    def _no_answer(self, call: str, exc: FunctionInvocationError) -> None:
        """Raise _NoAnswer for a call whose worker exited, until it has done so MAX_WORKER_EXITS times: then return,
        and the caller records the exit as the call's failure (logged at ERROR)."""
        exits = self._worker_exits.get(call, 0) + 1
        if exits < MAX_WORKER_EXITS:
            self._worker_exits[call] = exits
            raise _NoAnswer(exc.friendly) from exc
        self._worker_exits.pop(call, None)
        logger.error("%s: its worker exited %d times running it; recorded as its failure", call, exits)

    # ------------------------------------------------------------------ activities
    async def _run_activity(self, item: WorkItem) -> None:
        try:
            result = await self._execute_activity(item)
        except _NoAnswer as exc:
            # Nothing recorded: the work item stays and runs again (at least once, as in Azure). Not quiet, so its
            # end wakes the dispatcher once the item no longer counts as running, and the next pass starts it again.
            logger.warning(
                "the worker running activity %s (%s) exited (%s); running it again", item.name, item.instance_id, exc
            )
            self._quiet.discard(item.id)
            return
        try:
            await self._record_activity(item, result)
        except Exception:  # the work item stays, so the activity runs again: at least once, as in Azure
            logger.exception("recording the result of activity %s (%s) failed", item.name, item.instance_id)

    async def _record_activity(self, item: WorkItem, result: JsonDict) -> None:
        async with self._db.connection() as conn:
            # Recording the result and removing the work item commit together (one statement): a recorded activity
            # never runs again, and one whose result was not recorded (crash) runs again on the next start.
            if not await self._store.record_result(conn, item, result, utcnow()):
                return
        self.wake_instance(item.instance_id)

    async def _execute_activity(self, item: WorkItem) -> JsonDict:
        """Run the activity; TaskCompleted with its JSON result, or TaskFailed worded like the real host."""
        function = self._ctx.index.activities.get(item.name)
        if function is None:
            message = f"The function '{item.name}' doesn't exist, is disabled, or is not an activity function."
            return self._failed(item, message, None)
        try:
            inputs = {str(trigger_of(function).name): meta.Datum(item.input, "string")}
            datum = await self._ctx.invoker.invoke(function, inputs)
        except FunctionInvocationError as exc:
            if worker_exited(exc):
                self._no_answer(f"activity:{item.id}", exc)
            return self._failed(item, exc.friendly, exc.stack())
        except Exception as exc:  # e.g. an output the converter cannot encode: the worker fails the call too
            return self._failed(item, f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))
        self._worker_exits.pop(f"activity:{item.id}", None)
        result = None if datum is None else datum.value
        return event(
            EventType.TaskCompleted,
            utcnow(),
            TaskScheduledId=item.task_id,
            Result=None if result is None else str(result),
        )

    @staticmethod
    def _failed(item: WorkItem, friendly: str, stack: str | None) -> JsonDict:
        # Details: the serialized exception, as the host's ErrorDataConverter produces it.
        details = json.dumps({"Message": friendly, "StackTrace": stack})
        return event(
            EventType.TaskFailed,
            utcnow(),
            TaskScheduledId=item.task_id,
            Reason=f"Activity function '{item.name}' failed: {friendly}",
            Details=details,
        )
