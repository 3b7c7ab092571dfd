# intent_ref: platform.devhost-eventhubs
"""One partition of one trigger: read after the checkpoint, invoke (again, as a retry policy says), checkpoint."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from azure.functions import meta

from devhost.eventhubs.binding import EventHubTriggerSpec, trigger_input
from devhost.eventhubs.store import EventLogStore, StoredEvent
from devhost.invoker import FunctionInvocationError, FunctionRunner, Retry

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
                    if not await self._deliver(events, stopping):
                        return  # stopped while retrying: the events come again, from the checkpoint
                    await self._store.save_checkpoint(hub, group, events[-1])
                    position = events[-1].sequence_number
                    continue
            except Exception:
                logger.exception(
                    "event hub consumer %s/%s failed; retrying", self.spec.function_name, self.partition_id
                )
            await wait_any(self.wake, stopping, self._poll_interval)

    async def _deliver(self, events: Sequence[StoredEvent], stopping: asyncio.Event) -> bool:
        """Invoke the function with `events`, again as its retry policy says while it fails; True once a run
        succeeded or the retries are spent, False when the host stopped while waiting for a retry (the checkpoint
        must not move then)."""
        # Like the real trigger, a failed invocation (its retries spent) is logged and the checkpoint still
        # advances: the stream must not stall on one bad event.
        inputs, metadata = trigger_input(self.spec, self.partition_id, events)
        policy = self.spec.retry
        retry = 0
        while True:
            succeeded = await self._invoke(
                inputs, metadata, events, Retry(retry, policy.max_retry_count if policy else 0)
            )
            if succeeded or policy is None or not policy.retries_after(retry):
                return True
            retry += 1
            await wait_any(stopping, stopping, policy.delay_before(retry))
            if stopping.is_set():
                return False

    async def _invoke(
        self,
        inputs: dict[str, meta.Datum],
        metadata: dict[str, meta.Datum],
        events: Sequence[StoredEvent],
        retry: Retry,
    ) -> bool:
        """One run of the invocation; whether it succeeded (a failure is logged)."""
        try:
            await self._invoker.invoke(self.spec.function, inputs, metadata, retry=retry)
        except FunctionInvocationError as exc:
            logger.error(
                "Executed '%s' (Failed, partition %s, sequence numbers %s-%s, retry %s of %s): %s",
                self.spec.function_name,
                self.partition_id,
                events[0].sequence_number,
                events[-1].sequence_number,
                retry.retry_count,
                retry.max_retry_count,
                exc.friendly,
                exc_info=exc.exc,
            )
            return False
        except Exception:
            # Binding errors (the worker's converters) fail the invocation the same way.
            logger.exception("Executed '%s' (Failed while binding its input)", self.spec.function_name)
            return False
        return True


async def wait_any(event: asyncio.Event, stopping: asyncio.Event, timeout: float) -> None:
    """Return when either event is set or `timeout` seconds pass."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopping.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
