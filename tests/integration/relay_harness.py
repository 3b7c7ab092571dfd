# intent_ref: platform.events
"""Stand-ins for the outbox relay's tests: publishers whose chosen tenants' publishes fail, producers whose chosen
partition key's sends fail inside the real publisher, the relay's clock, and the control plane's record of deferrals."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from azure.eventhub import EventHubProducerClient
from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction
from shared.events import relay
from shared.events.publisher import AzureEventHubPublisher, OutboundEvent, PartitionTimeoutError


class Clock:
    """The relay's clock, moved on by the publishes (as long as their deadline, when they time out)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Partitions:
    """A publisher whose publishes to the `down` tenants (every tenant's with `all_down`) fail with `error` (their
    partition does not answer, by default); the others go. It keeps the tenant of every publish it was asked for,
    failed or not. With a `clock`, a failed publish moves it on by the relay's deadline, as one that waited it out.

    Called without arguments, as `relay_pending(Partitions)` calls it, it is a publisher whose hub answers."""

    def __init__(
        self,
        down: Iterable[uuid.UUID | str] = (),
        *,
        error: type[Exception] = PartitionTimeoutError,
        all_down: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.down = {str(tenant) for tenant in down}
        self.all_down = all_down
        self.error = error
        self.clock = clock
        self.tried: list[str | None] = []
        self._lock = threading.Lock()

    def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
        key = events[0].partition_key
        with self._lock:
            self.tried.append(key)
        if self.all_down or key in self.down:
            if self.clock is not None:
                self.clock.now += relay.RELAY_PUBLISH_TIMEOUT_S
            raise self.error(f"{hub}: not sent by its deadline ({timeout} s): the partition did not answer")

    def close(self) -> None:
        pass


class Batch(list[Any]):
    """The SDK's batch as the publisher uses it: the events added, for one partition key."""

    def __init__(self, partition_key: str | None) -> None:
        super().__init__()
        self.partition_key = partition_key

    def add(self, event: Any) -> None:
        self.append(event)


class FailingKey:
    """A producer whose link opened, and whose sends to `key` fail with `error`, as the SDK raises it (only the next one
    with `once`: the link is back for the sends after it); every other send goes, and keeps its events' keys."""

    def __init__(self, key: str | None, error: Exception, *, once: bool = False) -> None:
        self.key, self.error, self.once = key, error, once
        self.sent: list[str | None] = []

    def create_batch(self, *, partition_key: str | None = None) -> Batch:
        return Batch(partition_key)

    def send_batch(self, batch: Batch, *, timeout: float | None = None) -> None:
        if batch.partition_key == self.key:
            if self.once:
                self.key = None
            raise self.error
        self.sent.extend([batch.partition_key] * len(batch))

    def close(self) -> None:
        pass


class ProducerPublisher(AzureEventHubPublisher):
    """The real publisher (its deadlines, its errors' translation), sending through a stand-in producer."""

    def __init__(self, producer: FailingKey) -> None:
        super().__init__("127.0.0.1", credential=None)
        self.producer = producer

    def _producer(self, hub: str) -> tuple[EventHubProducerClient, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                self._producers[hub] = (self.producer, threading.Lock())  # type: ignore[assignment]
            return self._producers[hub]


def forget_deferrals(control_pool: ConnectionPool[Any]) -> None:
    """No tenant backing off: one left by an earlier test would keep its events from the next tests' drain, and send
    them in the middle of a later test once its backoff had passed."""
    with platform_transaction(pool=control_pool) as conn:
        conn.execute("DELETE FROM control.relay_deferrals")


def backoff_passed(control_pool: ConnectionPool[Any], *tenants: uuid.UUID) -> None:
    """The tenants' backoffs over, as time would end them: their failures' time and count stay as they were."""
    with platform_transaction(pool=control_pool) as conn:
        conn.execute(
            "UPDATE control.relay_deferrals SET retry_at = failed_at WHERE tenant_id = ANY(%s)", (list(tenants),)
        )


def deferral(control_pool: ConnectionPool[Any], tenant: uuid.UUID) -> tuple[int, float] | None:
    """The tenant's failures in a row and its backoff in seconds, or None when it is not deferred."""
    with platform_transaction(pool=control_pool) as conn:
        row = conn.execute(
            "SELECT failures, extract(epoch FROM retry_at - failed_at)::float8 AS backoff"
            " FROM control.relay_deferrals WHERE tenant_id = %s",
            (tenant,),
        ).fetchone()
    return None if row is None else (int(row["failures"]), float(row["backoff"]))
