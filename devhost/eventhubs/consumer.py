# intent_ref: platform.devhost-eventhubs
"""One partition of one trigger: read after the checkpoint, invoke, checkpoint, repeat."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from devhost.eventhubs.binding import EventHubTriggerSpec, trigger_input
from devhost.eventhubs.store import EventLogStore, StoredEvent
from devhost.invoker import FunctionInvocationError, FunctionRunner

logger = logging.getLogger(__name__)


class PartitionConsumer:
    """Delivers a partition's events to a function in order, at least once."""

    def __init__(
        self,
        spec: EventHubTriggerSpec,
        partition_id: int,
        store: EventLogStore,
        invoker: FunctionRunner,
        *,
        max_batch_size: int,
        poll_interval: float,
    ) -> None:
        self.spec = spec
        self.partition_id = partition_id
        self._store = store
        self._invoker = invoker
        self._max_batch = max_batch_size if spec.many else 1
        self._poll_interval = poll_interval
        self.wake = asyncio.Event()
        """Set when the hub may have new events (a NOTIFY, or the listener reconnecting)."""

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until `stopping` is set; database errors are logged and retried, never fatal."""
        hub, group = self.spec.hub, self.spec.consumer_group
        position: int | None = None
        while not stopping.is_set():
            # Cleared before reading: a publish that lands after the read sets it again.
            self.wake.clear()
            try:
                if position is None:
                    position = await self._store.checkpoint(hub, group, self.partition_id)
                events = await self._store.read(hub, self.partition_id, position, self._max_batch)
                if events:
                    await self._deliver(events)
                    await self._store.save_checkpoint(hub, group, events[-1])
                    position = events[-1].sequence_number
                    continue
            except Exception:
                logger.exception(
                    "event hub consumer %s/%s failed; retrying", self.spec.function_name, self.partition_id
                )
            await wait_any(self.wake, stopping, self._poll_interval)

    async def _deliver(self, events: Sequence[StoredEvent]) -> None:
        # Like the real trigger, a failed invocation is logged and the checkpoint still advances:
        # the stream must not stall on one bad event (retry policies are the function's business).
        inputs, metadata = trigger_input(self.spec, self.partition_id, events)
        try:
            await self._invoker.invoke(self.spec.function, inputs, metadata)
        except FunctionInvocationError as exc:
            logger.error(
                "Executed '%s' (Failed, partition %s, sequence numbers %s-%s): %s",
                self.spec.function_name,
                self.partition_id,
                events[0].sequence_number,
                events[-1].sequence_number,
                exc.friendly,
                exc_info=exc.exc,
            )
        except Exception:
            # Binding errors (the worker's converters) fail the invocation the same way.
            logger.exception("Executed '%s' (Failed while binding its input)", self.spec.function_name)


async def wait_any(event: asyncio.Event, stopping: asyncio.Event, timeout: float) -> None:
    """Return when either event is set or `timeout` seconds pass."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopping.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
