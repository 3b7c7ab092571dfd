# intent_ref: platform.devhost-eventhubs
"""Postgres access for the local Event Hubs log: hubs, reading partitions, checkpoints and appends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shared.db.migrate import apply_migrations

SCHEMA = "devhost_eventhubs"
MIGRATIONS = Path(__file__).with_name("migrations")
NOTIFY_CHANNEL = "devhost_eventhubs"
"""The channel devhost_eventhubs.publish() notifies on, with the hub name as payload."""

_ENSURE_HUB = "SELECT devhost_eventhubs.ensure_hub(%s, %s)"
_PARTITION_COUNT = "SELECT partition_count FROM devhost_eventhubs.hubs WHERE name = %s"
_PUBLISH = "SELECT partition_id, sequence_number FROM devhost_eventhubs.publish(%s, %s, %s, %s)"
_READ = (
    "SELECT partition_id, sequence_number, byte_offset, partition_key, body, properties, enqueued_at"
    " FROM devhost_eventhubs.events"
    " WHERE hub = %s AND partition_id = %s AND sequence_number > %s"
    " ORDER BY sequence_number LIMIT %s"
)
_CHECKPOINT = (
    "SELECT sequence_number FROM devhost_eventhubs.checkpoints"
    " WHERE hub = %s AND consumer_group = %s AND partition_id = %s"
)
_SAVE_CHECKPOINT = (
    "INSERT INTO devhost_eventhubs.checkpoints"
    " (hub, consumer_group, partition_id, sequence_number, byte_offset) VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (hub, consumer_group, partition_id) DO UPDATE"
    " SET sequence_number = EXCLUDED.sequence_number, byte_offset = EXCLUDED.byte_offset, updated_at = now()"
)

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]


@dataclass(frozen=True)
class StoredEvent:
    """One event as the log holds it."""

    partition_id: int
    sequence_number: int
    offset: int
    partition_key: str | None
    body: bytes
    properties: dict[str, Any]
    enqueued_time: datetime


@dataclass(frozen=True)
class NewEvent:
    """An event to append."""

    body: bytes
    partition_key: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Receipt:
    """Where an appended event landed."""

    partition_id: int
    sequence_number: int


async def migrate(database_url: str) -> None:
    """Create or upgrade the devhost_eventhubs schema (the runner is synchronous: run it off the loop)."""
    await asyncio.to_thread(apply_migrations, database_url, MIGRATIONS, schema=SCHEMA)


class EventLogStore:
    """Reads and writes the log through an async pool on the owner connection."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def ensure_hub(self, hub: str, partition_count: int) -> int:
        """Create `hub` unless it exists; return its partition count (fixed at creation)."""
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_ENSURE_HUB, (hub, partition_count))).fetchone()
        assert row is not None
        return int(row[0])

    async def partition_count(self, hub: str) -> int | None:
        """The partition count of `hub`, or None when no such hub exists (yet)."""
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_PARTITION_COUNT, (hub,))).fetchone()
        return None if row is None else int(row[0])

    async def publish(self, hub: str, events: Sequence[NewEvent]) -> list[Receipt]:
        """Append `events` to `hub` in one transaction: all of them or none."""
        receipts: list[Receipt] = []
        async with self._pool.connection() as conn, conn.transaction():
            for event in events:
                params = (hub, event.partition_key, event.body, Jsonb(event.properties))
                cursor = await conn.execute(_PUBLISH, params)
                row = await cursor.fetchone()
                assert row is not None
                receipts.append(Receipt(int(row[0]), int(row[1])))
        return receipts

    async def read(self, hub: str, partition_id: int, after_sequence: int, limit: int) -> list[StoredEvent]:
        """Up to `limit` events of the partition after `after_sequence`, in order."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_READ, (hub, partition_id, after_sequence, limit))
            rows = await cursor.fetchall()
        return [
            StoredEvent(
                partition_id=int(r[0]),
                sequence_number=int(r[1]),
                offset=int(r[2]),
                partition_key=r[3],
                body=bytes(r[4]),
                properties=dict(r[5]),
                enqueued_time=r[6],
            )
            for r in rows
        ]

    async def checkpoint(self, hub: str, consumer_group: str, partition_id: int) -> int:
        """The last checkpointed sequence number, or -1 (start of the stream, the trigger's default)."""
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_CHECKPOINT, (hub, consumer_group, partition_id))).fetchone()
        return -1 if row is None else int(row[0])

    async def save_checkpoint(self, hub: str, consumer_group: str, event: StoredEvent) -> None:
        """Record `event` as the last one processed by the consumer group in its partition."""
        async with self._pool.connection() as conn:
            params = (hub, consumer_group, event.partition_id, event.sequence_number, event.offset)
            await conn.execute(_SAVE_CHECKPOINT, params)
