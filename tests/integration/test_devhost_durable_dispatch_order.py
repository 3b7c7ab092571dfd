# intent_ref: platform.devhost-durable
"""The durable dispatcher serves runnable instances in the order their oldest due message became due, as a queue
would: in no order, a busy execution's instances, each woken by its own results, kept a new instance from starting
for a minute."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from devhost.durable.host import MIGRATIONS
from devhost.durable.store import SCHEMA, Dispatchable, Store
from shared.db.migrate import apply_migrations

T0 = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)


def _instance(conn: psycopg.Connection, hub: str, instance_id: str) -> None:
    conn.execute(
        "INSERT INTO devhost_durable.instances (task_hub, instance_id, execution_id, name, runtime_status,"
        " created_at, updated_at) VALUES (%s, %s, %s, 'o', 'Running', %s, %s)",
        (hub, instance_id, uuid.uuid4().hex, T0, T0),
    )


def _message(conn: psycopg.Connection, hub: str, instance_id: str, visible_at: datetime) -> None:
    conn.execute(
        "INSERT INTO devhost_durable.inbox (task_hub, instance_id, event, visible_at) VALUES (%s, %s, %s, %s)",
        (hub, instance_id, Jsonb({"EventType": "EventRaised"}), visible_at),
    )


def test_runnable_instances_come_oldest_due_message_first(pg) -> None:  # type: ignore[no-untyped-def]
    apply_migrations(pg.owner_url, MIGRATIONS, schema=SCHEMA)
    hub = f"o{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.owner_url, autocommit=True) as conn:
        # Busy instances first in the table, each with many messages; the newcomer last, its one message older
        # than all but the first busy instance's oldest.
        for n in range(6):
            _instance(conn, hub, f"busy-{n}")
        _instance(conn, hub, "newcomer")
        _instance(conn, hub, "timer")
        _message(conn, hub, "busy-0", T0)
        _message(conn, hub, "newcomer", T0 + timedelta(seconds=1))
        for n in range(6):
            for k in range(5):
                _message(conn, hub, f"busy-{n}", T0 + timedelta(seconds=2 + k))
        _message(conn, hub, "timer", T0 + timedelta(minutes=5))  # not due: not runnable, its time is the next due

    async def read() -> tuple[list[str], Dispatchable]:
        async with await psycopg.AsyncConnection.connect(pg.owner_url, row_factory=dict_row) as conn:
            store = Store(hub)
            now = T0 + timedelta(seconds=30)
            first_two = await store.runnable(conn, now, [], 2)
            found = await store.dispatchable(
                conn, now, running_episodes=["busy-0", "timer"], episode_limit=3, running_work=[], work_limit=0
            )
            return first_two, found

    first_two, found = asyncio.run(read())
    assert first_two == ["busy-0", "newcomer"]
    assert found.instances == ["newcomer", "busy-1", "busy-2"]
    assert found.due == T0 + timedelta(minutes=5)
    # Of the running episodes' instances, the one with a message due (its episode's end needs a pass after it).
    assert found.running_with_due == ["busy-0"]
