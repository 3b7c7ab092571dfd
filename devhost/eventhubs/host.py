# intent_ref: platform.devhost-eventhubs
"""The Event Hubs component of the devhost: a consumer per trigger and partition, woken by NOTIFY."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from devhost.component import HostContext
from devhost.eventhubs.admin import Deliver, GroupInUseError, NoSuchHubError, add_publish_route, add_read_route
from devhost.eventhubs.binding import EventHubTriggerSpec
from devhost.eventhubs.consumer import PartitionConsumer, wait_any
from devhost.eventhubs.store import NOTIFY_CHANNEL, EventLogStore, NewEvent, Pool, Receipt, StoredEvent, migrate
from devhost.hostjson import load_host_json
from devhost.loader import FunctionIndex
from devhost.notifications import Notifications
from devhost.tasks import stop_tasks

logger = logging.getLogger(__name__)

DEFAULT_PARTITION_COUNT = 4
DEFAULT_MAX_BATCH_SIZE = 100
_STOP_GRACE_SECONDS = 5.0


class EventHubHost:
    """Runs every eventHubTrigger function of the app against the Postgres-backed log."""

    def __init__(
        self,
        ctx: HostContext,
        *,
        partition_count: int = DEFAULT_PARTITION_COUNT,
        max_batch_size: int | None = None,
        poll_interval: float = 5.0,
    ) -> None:
        self._ctx = ctx
        self._partition_count = partition_count
        self._max_batch_size = max_batch_size or host_json_batch_size(ctx.index)
        self._poll_interval = poll_interval
        self._pool: Pool | None = None
        self._store: EventLogStore | None = None
        self._consumers: dict[str, list[PartitionConsumer]] = defaultdict(list)
        self._tasks: list[asyncio.Task[None]] = []
        self._notifications: Notifications | None = None
        self._stopping = asyncio.Event()
        self._readers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._group_locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    def add_routes(self, app: web.Application) -> None:
        """`POST /devhost/eventhubs/{hub}/events`, `GET .../{hub}/consumergroups/{group}/events`: local, keyed."""
        add_publish_route(app, self.publish)
        add_read_route(app, self.read_group)

    async def start(self) -> None:
        """Migrate, create the triggers' hubs, then start the listener and one consumer per partition."""
        await migrate(self._ctx.database_url)
        pool: Pool = AsyncConnectionPool(
            self._ctx.database_url,
            min_size=1,
            max_size=8,
            kwargs={"autocommit": True},
            open=False,
            name="devhost-eventhubs",
        )
        await pool.open(wait=True)
        self._pool, self._store = pool, EventLogStore(pool)
        self._stopping = asyncio.Event()
        self._consumers = defaultdict(list)
        specs = [EventHubTriggerSpec.from_function(f) for f in self._ctx.index.eventhub]
        for consumer in await self._plan(specs):
            self._consumers[consumer.spec.hub].append(consumer)
        # The host's one listening connection when it has one; a bare component (tests) listens on its own.
        self._notifications = self._ctx.notifications or Notifications(self._ctx.database_url)
        self._notifications.subscribe(NOTIFY_CHANNEL, self._on_notify)
        self._tasks = [
            asyncio.create_task(c.run(self._stopping), name=f"eventhubs-{c.spec.function_name}-{c.partition_id}")
            for consumers in self._consumers.values()
            for c in consumers
        ]
        logger.info("event hubs: %d consumer(s) on %d hub(s)", len(self._tasks), len(self._consumers))

    async def stop(self) -> None:
        """Let running invocations finish (briefly), then cancel; unfinished batches are redelivered."""
        self._stopping.set()
        if self._notifications is not None:
            self._notifications.unsubscribe(NOTIFY_CHANNEL, self._on_notify)
            if self._notifications is not self._ctx.notifications:
                await self._notifications.stop()
            self._notifications = None
        await stop_tasks(self._tasks, _STOP_GRACE_SECONDS)
        self._tasks = []
        if self._pool is not None:
            await self._pool.close()
        self._pool = self._store = None

    async def publish(self, hub: str, events: Sequence[NewEvent]) -> list[Receipt]:
        """Append events to `hub` (created with the host's partition count on first use)."""
        if self._store is None:
            raise RuntimeError("the event hub host is not started")
        await self._store.ensure_hub(hub, self._partition_count)
        return await self._store.publish(hub, events)

    async def read_group(self, hub: str, group: str, limit: int, wait: float, deliver: Deliver) -> None:
        """Hand up to `limit` events after `group`'s checkpoints to `deliver` (waiting up to `wait` s for one).

        The checkpoints advance only once `deliver` returned; readers of one group take turns, so none gets
        what another was handed. The groups of the app's own triggers are refused: they would steal its events.
        """
        if self._store is None:
            raise RuntimeError("the event hub host is not started")
        if any(c.spec.consumer_group == group for c in self._consumers.get(hub, [])):
            raise GroupInUseError(f"consumer group {group!r} of {hub!r} is the app's own; use another")
        partitions = await self._store.partition_count(hub)
        if partitions is None:
            raise NoSuchHubError(hub)
        deadline = asyncio.get_running_loop().time() + wait
        async with self._group_locks[(hub, group)]:
            while True:
                woken = asyncio.Event()
                self._readers[hub].add(woken)  # before reading: a publish after the read wakes it
                try:
                    events = await self._read_after_checkpoints(hub, group, partitions, limit)
                    remaining = deadline - asyncio.get_running_loop().time()
                    if events or remaining <= 0 or self._stopping.is_set():
                        break
                    await wait_any(woken, self._stopping, remaining)
                finally:
                    self._readers[hub].discard(woken)
            await deliver(events)
            last: dict[int, StoredEvent] = {e.partition_id: e for e in events}
            for event in last.values():
                await self._store.save_checkpoint(hub, group, event)

    async def _read_after_checkpoints(self, hub: str, group: str, partitions: int, limit: int) -> list[StoredEvent]:
        assert self._store is not None
        events: list[StoredEvent] = []
        for partition_id in range(partitions):
            if len(events) >= limit:
                break
            position = await self._store.checkpoint(hub, group, partition_id)
            events += await self._store.read(hub, partition_id, position, limit - len(events))
        return events

    async def _plan(self, specs: Sequence[EventHubTriggerSpec]) -> list[PartitionConsumer]:
        assert self._store is not None
        groups: dict[tuple[str, str], list[EventHubTriggerSpec]] = defaultdict(list)
        for spec in specs:
            groups[(spec.hub, spec.consumer_group)].append(spec)
        consumers: list[PartitionConsumer] = []
        for (hub, group), members in groups.items():
            partitions = await self._store.ensure_hub(hub, self._partition_count)
            if len(members) > 1:
                # In Azure such functions compete for the partitions' leases; share them out the same way.
                logger.warning(
                    "functions %s share hub %r and consumer group %r: each gets a share of the partitions",
                    [m.function_name for m in members],
                    hub,
                    group,
                )
            for partition_id in range(partitions):
                spec = members[partition_id % len(members)]
                consumers.append(
                    PartitionConsumer(
                        spec,
                        partition_id,
                        self._store,
                        self._ctx.invoker,
                        max_batch_size=self._max_batch_size,
                        poll_interval=self._poll_interval,
                    )
                )
        return consumers

    def _on_notify(self, payload: str | None, _pid: int | None) -> None:
        if payload is None:
            self._wake(None)
            return
        # "<hub>:<partition>" (hub names have no colon); a bare hub name wakes every partition of it.
        hub, _, partition = payload.partition(":")
        self._wake(hub, int(partition) if partition.isdigit() else None)

    def _wake(self, hub: str | None, partition_id: int | None = None) -> None:
        targets = self._consumers.values() if hub is None else [self._consumers.get(hub, [])]
        for consumers in targets:
            for consumer in consumers:
                # A consumer of another partition would only read nothing: each read is a statement on the loop.
                if partition_id is None or consumer.partition_id == partition_id:
                    consumer.wake.set()
        for readers in self._readers.values() if hub is None else [self._readers.get(hub, set())]:
            for reader in readers:
                reader.set()


def host_json_batch_size(index: FunctionIndex) -> int:
    """`extensions.eventHubs.maxEventBatchSize` of the host.json beside the app's function_app.py."""
    if index.app_dir is not None:
        # Recorded when the script was loaded: another app loaded since under the same module name (every app's
        # script is function_app.py) replaced this one in sys.modules, and the search below found none.
        return load_host_json(index.app_dir).eventhub_max_batch_size
    # An index built from an app object alone: the module defining the app object says where it came from.
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and any(value is index.app for value in vars(module).values()):
            try:
                return load_host_json(Path(path).parent).eventhub_max_batch_size
            except (OSError, ValueError) as exc:
                logger.warning("cannot read host.json beside %s (%s); using the default batch size", path, exc)
    return DEFAULT_MAX_BATCH_SIZE
