# intent_ref: platform.devhost-durable
"""SQL for the durable store (schema devhost_durable): instances, history, inbox and activity work items."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from devhost.durable.episode import ActivityCall, Bookkeeping, Message, SeenAction
from devhost.durable.protocol import TERMINAL_STATUSES, JsonDict, RuntimeStatus
from devhost.durable.retry import RetryState

SCHEMA = "devhost_durable"
NOTIFY_CHANNEL = "devhost_durable"
"""Migration 0002: an inbox message or work item was committed (payload: the task hub)."""
Conn = AsyncConnection[DictRow]

_INSTANCES = sql.Identifier(SCHEMA, "instances")
_HISTORY = sql.Identifier(SCHEMA, "history")
_INBOX = sql.Identifier(SCHEMA, "inbox")
_WORK = sql.Identifier(SCHEMA, "work_items")
_COLUMNS = sql.SQL(
    "instance_id, execution_id, name, version, runtime_status, input_json, output_json, custom_status_json,"
    " created_at, updated_at, parent_instance_id, parent_execution_id, parent_name, parent_task_id,"
    " next_event_id, seen_actions, retries"
)
_TERMINAL = [str(s) for s in TERMINAL_STATUSES]
_RUNNABLE = [str(RuntimeStatus.Pending), str(RuntimeStatus.Running), str(RuntimeStatus.ContinuedAsNew)]
_HISTORY_SINCE = sql.SQL(
    "SELECT position, event FROM {} WHERE task_hub = %s AND instance_id = %s AND position >= %s ORDER BY position"
).format(_HISTORY)
_VISIBLE = sql.SQL(
    "SELECT id, execution_id, event FROM {} WHERE task_hub = %s AND instance_id = %s AND visible_at <= %s ORDER BY id"
).format(_INBOX)
# Runnable instances in the order their oldest due message became due, as a queue delivers them: in no order, the
# instances of one busy execution after another took every episode slot and a new instance waited a minute to start.
# Each instance's oldest message through the inbox_instance index: grouping every due message cost 37 ms a pass with
# 100,000 of them queued.
_RUNNABLE_FIRST_DUE = sql.SQL(
    "SELECT i.instance_id, f.visible_at AS first_due FROM {instances} i CROSS JOIN LATERAL (SELECT m.visible_at"
    " FROM {inbox} m WHERE m.task_hub = i.task_hub AND m.instance_id = i.instance_id ORDER BY m.visible_at LIMIT 1) f"
    " WHERE i.task_hub = %s AND i.runtime_status = ANY(%s) AND NOT (i.instance_id = ANY(%s)) AND f.visible_at <= %s"
    " ORDER BY f.visible_at, i.instance_id LIMIT %s"
).format(instances=_INSTANCES, inbox=_INBOX)
_PENDING_WORK = sql.SQL(
    "SELECT id, instance_id, execution_id, task_id, name, input FROM {} WHERE task_hub = %s"
    " AND NOT (id = ANY(%s)) ORDER BY id LIMIT %s"
).format(_WORK)
# Binary arrays (%b): the text format escapes each quote of each input (JSON, a carried state too) in Python, about
# a millisecond of the event loop per 5 KiB input.
_ADD_WORK = sql.SQL(
    "INSERT INTO {} (task_hub, instance_id, execution_id, task_id, name, input, created_at)"
    " SELECT %s, %s, %s, t.task_id, t.name, t.input, %s"
    " FROM unnest(%b::integer[], %b::text[], %b::text[]) AS t(task_id, name, input)"
    " ON CONFLICT DO NOTHING RETURNING id, instance_id, execution_id, task_id, name, input"
).format(_WORK)
# The runnable instances; then the running episodes' instances with a message due (`running`: an episode that read
# its messages before it came ends, and the message needs a pass after it); then one row (instance_id NULL) with the
# time the next message falls due.
_RUNNABLE_AND_NEXT_DUE = sql.SQL(
    "(SELECT r.instance_id, NULL::timestamptz AS due, r.first_due, false AS running FROM ({runnable}) r)"
    " UNION ALL (SELECT DISTINCT m.instance_id, NULL::timestamptz, NULL::timestamptz, true FROM {inbox} m"
    " WHERE m.task_hub = %s AND m.instance_id = ANY(%s) AND m.visible_at <= %s)"
    " UNION ALL (SELECT NULL, min(m.visible_at), NULL, false FROM {inbox} m JOIN {instances} i"
    " ON i.task_hub = m.task_hub AND i.instance_id = m.instance_id WHERE m.task_hub = %s"
    " AND i.runtime_status = ANY(%s) AND m.visible_at > %s)"
    " ORDER BY 3 NULLS LAST, 1"
).format(runnable=_RUNNABLE_FIRST_DUE, instances=_INSTANCES, inbox=_INBOX)


@dataclass
class Instance:
    """One orchestration instance and the bookkeeping of its current execution."""

    instance_id: str
    execution_id: str
    name: str
    version: str
    runtime_status: RuntimeStatus
    input_json: str | None
    created_at: datetime
    updated_at: datetime
    output_json: str | None = None
    custom_status_json: str | None = None
    parent_instance_id: str | None = None
    parent_execution_id: str | None = None
    parent_name: str | None = None
    parent_task_id: int | None = None
    book: Bookkeeping = field(default_factory=Bookkeeping)

    @property
    def is_terminal(self) -> bool:
        return self.runtime_status.is_terminal


@dataclass(frozen=True)
class WorkItem:
    """An activity to run (again, after a crash) until its completion is recorded."""

    id: int
    instance_id: str
    execution_id: str
    task_id: int
    name: str
    input: str | None


@dataclass(frozen=True)
class Dispatchable:
    """What one dispatcher pass finds: instances to run (oldest due message first), activities to run (oldest
    first), running episodes' instances with a message due, and when the next message falls due."""

    instances: list[str]
    work: list[WorkItem]
    due: datetime | None
    running_with_due: list[str]


@dataclass(frozen=True)
class InstanceQuery:
    """Filters of the list and purge APIs; None means no filter."""

    created_from: datetime | None = None
    created_to: datetime | None = None
    statuses: Sequence[str] | None = None
    prefix: str | None = None
    limit: int | None = None
    offset: int = 0


def _row_to_instance(row: dict[str, Any]) -> Instance:
    book = Bookkeeping(
        next_id=int(row["next_event_id"]),
        actions=[SeenAction.from_json(a) for a in row["seen_actions"]],
        retries={int(k): RetryState.from_json(v) for k, v in row["retries"].items()},
    )
    return Instance(
        instance_id=row["instance_id"],
        execution_id=row["execution_id"],
        name=row["name"],
        version=row["version"],
        runtime_status=RuntimeStatus(row["runtime_status"]),
        input_json=row["input_json"],
        output_json=row["output_json"],
        custom_status_json=row["custom_status_json"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        parent_instance_id=row["parent_instance_id"],
        parent_execution_id=row["parent_execution_id"],
        parent_name=row["parent_name"],
        parent_task_id=row["parent_task_id"],
        book=book,
    )


def _work_item(r: dict[str, Any]) -> WorkItem:
    return WorkItem(int(r["id"]), r["instance_id"], r["execution_id"], int(r["task_id"]), r["name"], r["input"])


def _book_params(book: Bookkeeping) -> tuple[int, Jsonb, Jsonb]:
    return (
        book.next_id,
        Jsonb([a.to_json() for a in book.actions]),
        Jsonb({str(k): v.to_json() for k, v in book.retries.items()}),
    )


class Store:
    """Statements for one task hub; each takes the connection of the caller's transaction."""

    def __init__(self, task_hub: str) -> None:
        self.hub = task_hub

    # ------------------------------------------------------------------ instances
    async def get(self, conn: Conn, instance_id: str, *, lock: bool = False) -> Instance | None:
        """The instance, optionally locked FOR UPDATE: the lock serialises episodes and management calls."""
        query = sql.SQL("SELECT {} FROM {} WHERE task_hub = %s AND instance_id = %s").format(_COLUMNS, _INSTANCES)
        if lock:
            query = query + sql.SQL(" FOR UPDATE")
        cur = await conn.execute(query, (self.hub, instance_id))
        row = await cur.fetchone()
        return None if row is None else _row_to_instance(row)

    async def insert(self, conn: Conn, instance: Instance) -> bool:
        """Insert a new instance; False when one with that id appeared concurrently."""
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO {} (task_hub, {}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, %s, %s) ON CONFLICT (task_hub, instance_id) DO NOTHING RETURNING 1"
            ).format(_INSTANCES, _COLUMNS),
            (
                self.hub,
                instance.instance_id,
                instance.execution_id,
                instance.name,
                instance.version,
                str(instance.runtime_status),
                instance.input_json,
                instance.output_json,
                instance.custom_status_json,
                instance.created_at,
                instance.updated_at,
                instance.parent_instance_id,
                instance.parent_execution_id,
                instance.parent_name,
                instance.parent_task_id,
                *_book_params(instance.book),
            ),
        )
        # RETURNING rather than rowcount: inside an episode's pipeline rowcount is not known yet.
        return await cur.fetchone() is not None

    async def save(self, conn: Conn, instance: Instance) -> None:
        """Write back everything that changes over an instance's life (the row must be locked)."""
        await conn.execute(
            sql.SQL(
                "UPDATE {} SET execution_id = %s, name = %s, version = %s, runtime_status = %s, input_json = %s,"
                " output_json = %s, custom_status_json = %s, created_at = %s, updated_at = %s,"
                " parent_instance_id = %s, parent_execution_id = %s, parent_name = %s, parent_task_id = %s,"
                " next_event_id = %s, seen_actions = %s, retries = %s WHERE task_hub = %s AND instance_id = %s"
            ).format(_INSTANCES),
            (
                instance.execution_id,
                instance.name,
                instance.version,
                str(instance.runtime_status),
                instance.input_json,
                instance.output_json,
                instance.custom_status_json,
                instance.created_at,
                instance.updated_at,
                instance.parent_instance_id,
                instance.parent_execution_id,
                instance.parent_name,
                instance.parent_task_id,
                *_book_params(instance.book),
                self.hub,
                instance.instance_id,
            ),
        )

    async def query(self, conn: Conn, query: InstanceQuery) -> list[Instance]:
        """Instances matching the filters, oldest first."""
        where, params = self._filters(query)
        statement = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY created_at, instance_id").format(
            _COLUMNS, _INSTANCES, where
        )
        if query.limit is not None:
            statement += sql.SQL(" LIMIT %s")
            params.append(query.limit)
        if query.offset:
            statement += sql.SQL(" OFFSET %s")
            params.append(query.offset)
        cur = await conn.execute(statement, params)
        return [_row_to_instance(row) for row in await cur.fetchall()]

    def _filters(self, query: InstanceQuery) -> tuple[sql.Composable, list[Any]]:
        clauses: list[sql.Composable] = [sql.SQL("task_hub = %s")]
        params: list[Any] = [self.hub]
        if query.created_from is not None:
            clauses.append(sql.SQL("created_at >= %s"))
            params.append(query.created_from)
        if query.created_to is not None:
            clauses.append(sql.SQL("created_at <= %s"))
            params.append(query.created_to)
        if query.statuses:
            clauses.append(sql.SQL("runtime_status = ANY(%s)"))
            params.append(list(query.statuses))
        if query.prefix:
            clauses.append(sql.SQL("starts_with(instance_id, %s)"))
            params.append(query.prefix)
        return sql.SQL(" AND ").join(clauses), params

    async def purge(self, conn: Conn, instance_ids: Iterable[str]) -> int:
        """Delete instances with their history and pending messages; return how many instances went."""
        ids = list(instance_ids)
        if not ids:
            return 0
        for table in (_HISTORY, _INBOX):
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE task_hub = %s AND instance_id = ANY(%s)").format(table), (self.hub, ids)
            )
        cur = await conn.execute(
            sql.SQL("DELETE FROM {} WHERE task_hub = %s AND instance_id = ANY(%s)").format(_INSTANCES), (self.hub, ids)
        )
        return cur.rowcount

    # ------------------------------------------------------------------ history
    async def history(self, conn: Conn, instance_id: str) -> list[JsonDict]:
        cur = await conn.execute(
            sql.SQL("SELECT event FROM {} WHERE task_hub = %s AND instance_id = %s ORDER BY position").format(_HISTORY),
            (self.hub, instance_id),
        )
        return [row["event"] for row in await cur.fetchall()]

    async def history_since(self, conn: Conn, instance_id: str, start: int) -> list[tuple[int, JsonDict]]:
        """(position, event) from `start` on: what an engine that kept the first `start` events lacks."""
        cur = await conn.execute(_HISTORY_SINCE, (self.hub, instance_id, start))
        return [(int(row["position"]), row["event"]) for row in await cur.fetchall()]

    async def episode_input(
        self, conn: Conn, instance_id: str, now: datetime, history_from: int
    ) -> tuple[Instance | None, list[Message], list[tuple[int, JsonDict]]]:
        """The locked instance, its due messages and its history from `history_from`, in one round trip."""
        # Sent together (the caller's pipeline), read after: the lock is taken before the other two run.
        locked = await conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE task_hub = %s AND instance_id = %s FOR UPDATE").format(
                _COLUMNS, _INSTANCES
            ),
            (self.hub, instance_id),
        )
        due = await conn.execute(_VISIBLE, (self.hub, instance_id, now))
        history = await conn.execute(_HISTORY_SINCE, (self.hub, instance_id, history_from))
        row = await locked.fetchone()
        messages = [Message(int(r["id"]), r["execution_id"], r["event"]) for r in await due.fetchall()]
        events = [(int(r["position"]), r["event"]) for r in await history.fetchall()]
        return (None if row is None else _row_to_instance(row)), messages, events

    async def append_history(
        self, conn: Conn, instance_id: str, events: Sequence[JsonDict], start: int | None = None
    ) -> None:
        """Append after the last committed event, at `start` when the caller knows it (the row is locked)."""
        if not events:
            return
        if start is None:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT coalesce(max(position) + 1, 0) AS next FROM {} WHERE task_hub = %s AND instance_id = %s"
                ).format(_HISTORY),
                (self.hub, instance_id),
            )
            row = await cur.fetchone()
            start = int(row["next"]) if row else 0
        # One statement for the whole batch (an episode appends two or three events): each statement costs the
        # event loop its client-side work, and the loop is what every episode, activity and request shares.
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (task_hub, instance_id, position, event)"
                " SELECT %s, %s, %s + t.n - 1, t.event FROM jsonb_array_elements(%s) WITH ORDINALITY AS t(event, n)"
            ).format(_HISTORY),
            (self.hub, instance_id, start, Jsonb(list(events))),
        )

    async def clear_history(self, conn: Conn, instance_id: str) -> None:
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE task_hub = %s AND instance_id = %s").format(_HISTORY), (self.hub, instance_id)
        )

    # ------------------------------------------------------------------ inbox
    async def send(
        self,
        conn: Conn,
        instance_id: str,
        execution_id: str | None,
        history_event: JsonDict,
        visible_at: datetime,
        task_id: int | None = None,
    ) -> None:
        """Queue an event for the instance's next episode (not before `visible_at`)."""
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (task_hub, instance_id, execution_id, task_id, event, visible_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
            ).format(_INBOX),
            (self.hub, instance_id, execution_id, task_id, Jsonb(history_event), visible_at),
        )

    async def visible_messages(self, conn: Conn, instance_id: str, now: datetime) -> list[Message]:
        cur = await conn.execute(_VISIBLE, (self.hub, instance_id, now))
        return [Message(int(r["id"]), r["execution_id"], r["event"]) for r in await cur.fetchall()]

    async def delete_messages(self, conn: Conn, ids: Sequence[int]) -> None:
        if ids:
            await conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(_INBOX), (list(ids),))

    async def drop_inbox(self, conn: Conn, instance_id: str) -> None:
        """Forget every pending message of the instance (it ended or starts afresh)."""
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE task_hub = %s AND instance_id = %s").format(_INBOX), (self.hub, instance_id)
        )

    async def cancel_timers(self, conn: Conn, instance_id: str, execution_id: str, timer_ids: Sequence[int]) -> None:
        if timer_ids:
            await conn.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE task_hub = %s AND instance_id = %s AND execution_id = %s"
                    " AND task_id = ANY(%s)"
                ).format(_INBOX),
                (self.hub, instance_id, execution_id, list(timer_ids)),
            )

    async def runnable(self, conn: Conn, now: datetime, exclude: Sequence[str], limit: int) -> list[str]:
        """Instances that can run an episode: a message is due and they are neither suspended nor finished."""
        cur = await conn.execute(_RUNNABLE_FIRST_DUE, (self.hub, _RUNNABLE, list(exclude), now, limit))
        return [row["instance_id"] for row in await cur.fetchall()]

    async def dispatchable(
        self,
        conn: Conn,
        now: datetime,
        *,
        running_episodes: Sequence[str],
        episode_limit: int,
        running_work: Sequence[int],
        work_limit: int,
    ) -> Dispatchable:
        """Runnable instances, pending work, running episodes' instances with a message due, and when the next
        message of a runnable instance falls due (a timer)."""
        running = list(running_episodes)
        runnable = await conn.execute(
            _RUNNABLE_AND_NEXT_DUE,
            (
                *(self.hub, _RUNNABLE, running, now, max(episode_limit, 0)),
                *(self.hub, running, now),
                *(self.hub, _RUNNABLE, now),
            ),
        )
        work = await conn.execute(_PENDING_WORK, (self.hub, list(running_work), work_limit)) if work_limit > 0 else None
        rows = await runnable.fetchall()
        items = [_work_item(r) for r in await work.fetchall()] if work is not None else []
        return Dispatchable(
            instances=[r["instance_id"] for r in rows if r["instance_id"] is not None and not r["running"]],
            work=items,
            due=next((r["due"] for r in rows if r["instance_id"] is None), None),
            running_with_due=[r["instance_id"] for r in rows if r["running"]],
        )

    # ------------------------------------------------------------------ activity work items
    async def add_work(
        self,
        conn: Conn,
        instance_id: str,
        execution_id: str,
        calls: Sequence[ActivityCall],
        now: datetime,
    ) -> AsyncCursor[DictRow] | None:
        """Queue the activities in one statement; its cursor returns the items added (read it once the
        transaction has committed: in a pipeline, the rows arrive with the sync)."""
        if not calls:
            return None
        return await conn.execute(
            _ADD_WORK,
            (
                self.hub,
                instance_id,
                execution_id,
                now,
                [c.task_id for c in calls],
                [c.name for c in calls],
                [c.input for c in calls],
            ),
        )

    @staticmethod
    async def added_work(cursor: AsyncCursor[DictRow] | None) -> list[WorkItem]:
        """The items an `add_work` added (none already queued are repeated)."""
        return [_work_item(r) for r in await cursor.fetchall()] if cursor is not None else []

    async def pending_work(self, conn: Conn, exclude: Sequence[int], limit: int) -> list[WorkItem]:
        cur = await conn.execute(_PENDING_WORK, (self.hub, list(exclude), limit))
        return [_work_item(r) for r in await cur.fetchall()]

    async def raise_event(self, conn: Conn, instance_id: str, history_event: JsonDict, now: datetime) -> str | None:
        """Queue an external event unless the instance has finished; its status (None: no such instance).

        One statement: the row lock orders it with the instance's episodes (one that finishes the instance
        commits first, and then nothing is queued), as a transaction around a locked read would.
        """
        cur = await conn.execute(
            sql.SQL(
                "WITH target AS (SELECT runtime_status FROM {instances} WHERE task_hub = %s AND instance_id = %s"
                " FOR UPDATE), queued AS (INSERT INTO {inbox} (task_hub, instance_id, execution_id, task_id, event,"
                " visible_at) SELECT %s, %s, NULL, NULL, %s, %s FROM target WHERE NOT (runtime_status = ANY(%s))"
                " RETURNING 1) SELECT runtime_status, (SELECT count(*) FROM queued) AS queued FROM target"
            ).format(instances=_INSTANCES, inbox=_INBOX),
            (self.hub, instance_id, self.hub, instance_id, Jsonb(history_event), now, _TERMINAL),
        )
        row = await cur.fetchone()
        return None if row is None else str(row["runtime_status"])

    async def record_result(self, conn: Conn, item: WorkItem, history_event: JsonDict, visible_at: datetime) -> bool:
        """Remove a work item and queue its result for the instance, unless the item was already taken (its result
        is recorded) or the execution no longer waits for it; True when the result was queued.

        One statement, so one round trip and atomic as a transaction around the three would be: the item goes
        whether or not the result is queued, and a result is never queued twice.
        """
        cur = await conn.execute(
            sql.SQL(
                "WITH taken AS (DELETE FROM {work} WHERE id = %s RETURNING 1), target AS (SELECT 1 FROM {instances}"
                " WHERE task_hub = %s AND instance_id = %s AND execution_id = %s AND NOT (runtime_status = ANY(%s))"
                " AND EXISTS (SELECT 1 FROM taken))"
                " INSERT INTO {inbox} (task_hub, instance_id, execution_id, task_id, event, visible_at)"
                " SELECT %s, %s, %s, %s, %s, %s FROM target RETURNING 1"
            ).format(work=_WORK, instances=_INSTANCES, inbox=_INBOX),
            (
                item.id,
                self.hub,
                item.instance_id,
                item.execution_id,
                _TERMINAL,
                self.hub,
                item.instance_id,
                item.execution_id,
                item.task_id,
                Jsonb(history_event),
                visible_at,
            ),
        )
        return await cur.fetchone() is not None


class Database:
    """The component's own async connection pool (opened in start()) and its task-hub lease."""

    def __init__(self, conninfo: str, *, max_size: int = 10) -> None:
        self._conninfo = conninfo
        self._max_size = max_size
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._lease: Conn | None = None
        self.backend_pids: set[int] = set()
        """Server processes of this pool's connections: notifications they cause need not wake their own host."""

    async def open(self) -> None:
        # Autocommit: reads need no transaction; writes say `async with conn.transaction()` explicitly.
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._max_size,
            open=False,
            name="devhost-durable",
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=self._configure,
        )
        await pool.open(wait=True)
        self._pool = pool

    async def _configure(self, conn: Conn) -> None:
        self.backend_pids.add(conn.info.backend_pid)

    async def close(self) -> None:
        if self._lease is not None:
            await self._lease.close()
            self._lease = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def connection(self) -> AbstractAsyncContextManager[Conn]:
        if self._pool is None:
            raise RuntimeError("the durable store is not started")
        return self._pool.connection()

    async def lease_task_hub(self, task_hub: str, timeout: float = 15.0) -> None:
        """Hold a session advisory lock on the task hub for as long as this host runs.

        Dispatching assumes one host per task hub (in-flight work is tracked in memory). A second host on the same
        hub fails loudly here instead of running work twice. The lock dies with the session, so after a crash the
        restarted host gets it as soon as the server notices the old connection is gone.
        """
        key = zlib.crc32(f"devhost-durable:{task_hub}".encode())
        conn = await AsyncConnection.connect(self._conninfo, autocommit=True, row_factory=dict_row)
        deadline = time.monotonic() + timeout
        while True:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (key,))
            row = await cur.fetchone()
            if row is not None and row["ok"]:
                self._lease = conn
                return
            if time.monotonic() > deadline:
                await conn.close()
                raise RuntimeError(f"another devhost is running durable task hub {task_hub!r} on this database")
            await asyncio.sleep(0.2)
