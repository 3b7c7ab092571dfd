# intent_ref: platform.events
"""The app's Event Hubs publisher port, with a local (Postgres, devhost) and an Azure backend."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.config import get_settings
from shared.db.session import allow_nested_borrow, entry_point_statement

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.eventhub import EventDataBatch, EventHubProducerClient

PLATFORM_EVENTS_HUB = "platform-events"
"""Domain events out (intent.*, execution.*, step.*, and tenants' custom.* events), keyed by tenant."""

SENDER_THREADS = 8
"""Sends in flight at once for callers with a timeout (a module's publish, the outbox relay's), each on a thread of
its own in its hub's turn: a hub that is away keeps one until the SDK gives up. A caller that finds them all busy gives
up by its deadline too, its send never started."""
SET_ASIDE_PER_HUB = 1
"""Producers of one hub set aside at once: each was left by its caller at its deadline while its sender still ran
(stuck in the link's open, which the SDK holds for minutes against a hub that does not answer), and is closed by that
sender once the SDK gives up. The hub's next publish builds a fresh producer instead of waiting for that turn. With the
hub's current producer, whose sender may be stuck as well, one hub ties up at most 1 + SET_ASIDE_PER_HUB links and
sender threads; past that bound a publish waits for the current turn (by its deadline), as a hub that is away
everywhere must not take a new link and thread per publish."""
CLOSE_WAIT_S = 5.0
"""How long close() waits for its producers' own closes, all together. The SDK's close waits for the producer's lock,
which a link open stuck against a hub that does not answer holds for minutes: close() runs as the process stops or
restarts, so a producer not closed by then is left to close on its own thread (a daemon's, never holding the exit)
once the SDK gives up."""
_TURN_LOOK_S = 0.2
"""How often a publish waiting for its hub's turn looks whether that producer was set aside meanwhile (then it takes
the fresh one's turn: the one it waited for is released only when the SDK gives up)."""

PropertyValue = str | int | float | bool | None
"""What both backends carry as an application property (AMQP and JSON both represent these)."""

# All of a publish's events in one statement, appended in their order (the function runs once per array element, in
# ordinality order); the arrays travel in binary, which psycopg dumps without escaping each element in Python.
_LOCAL_PUBLISH = (
    "SELECT p.partition_id, p.sequence_number"
    " FROM unnest(%b::text[], %b::bytea[], %b::jsonb[]) WITH ORDINALITY AS e (partition_key, body, properties, n)"
    " CROSS JOIN LATERAL devhost_eventhubs.publish(%s, e.partition_key, e.body, e.properties) AS p"
)


@dataclass(frozen=True)
class OutboundEvent:
    """One event to send. Events with the same partition key keep their order (same partition)."""

    body: bytes | str | Any
    """bytes as they are, a str as UTF-8 text, anything else as compact JSON."""
    partition_key: str | None = None
    properties: Mapping[str, PropertyValue] = field(default_factory=dict)

    def body_bytes(self) -> bytes:
        """The bytes that go on the wire."""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


logger = logging.getLogger(__name__)


class PublishTimeoutError(TimeoutError):
    """A publish given a `timeout` did not finish within it; any of its events may have been sent all the same."""


class PartitionTimeoutError(PublishTimeoutError):
    """A timed publish whose hub link had opened did not get its events' send done by its deadline: the SDK's send
    timed out, or the caller's deadline came while the send was still on. Events go to the partition of their key, so
    it may be that partition's trouble alone, where other keys still go; the rest of `PublishTimeoutError` (the hub's
    turn still busy, every sender busy, a link that never opened, the publisher closed) holds for every key of the
    hub. A send whose link was lost meanwhile and whose open again inside the send outlasted the deadline reads as
    this too (the SDK raises nothing by then to tell it apart): the hub's next publish then finds the link's trouble
    as the hub's. One whose link the SDK gave up on first reads as `PublishLinkError`."""


class PublishLinkError(Exception):
    """A timed publish whose send failed on its hub's link (lost, or dropped with its connection) once the SDK's own
    retries, which open the link again, gave up before the deadline: the hub's link, shared by every key, and not any
    partition's trouble. Any of its events may have been sent all the same."""


class EventPublisher(Protocol):
    """Sends events to an event hub; returns once the service (or local log) has accepted all of them."""

    def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
        """Send `events` to `hub`, raising if any could not be sent; with a `timeout` (seconds), a publish not done
        by then raises `PublishTimeoutError`."""

    def close(self) -> None:
        """Release connections."""


class LocalEventHubPublisher:
    """Appends to the devhost's Postgres log through its entry point `devhost_eventhubs.publish()`, which the app's
    login may call (through the runtime role) and which runs as the log's owner."""

    def __init__(self, pool: ConnectionPool[Any] | None = None) -> None:
        self._pool = pool

    def publish(
        self,
        hub: str,
        events: Sequence[OutboundEvent],
        *,
        timeout: float | None = None,  # noqa: ARG002
    ) -> None:
        """Append all events in one statement: every event lands, or none does. The devhost's own database answers
        within its pool's wait, so `timeout` adds no bound of its own here."""
        if not events:
            return
        # The devhost's stand-in for Event Hubs, which the outbox relay calls inside its tenant transaction: one
        # relay runs at a time, so its second connection cannot wait on itself. Requests never publish here.
        # One statement appends every event through the log's own entry point, so it commits all of them or none.
        with allow_nested_borrow(), entry_point_statement(pool=self._pool) as conn:
            conn.execute(
                _LOCAL_PUBLISH,
                (
                    [event.partition_key for event in events],
                    [event.body_bytes() for event in events],
                    [Jsonb(dict(event.properties)) for event in events],
                    hub,
                ),
            )

    def close(self) -> None:
        """Nothing to release: the pool belongs to its creator."""


@dataclass(eq=False)
class _Sending:
    """A publish's send in flight, from its hub's turn taken (in the turn of `producer`) until it ended: the one record
    close() stops and, for a timed send whose caller gave up while its sender still ran, the one stranded and then set
    aside (two records, one per registry, could each tell the send's state its own way)."""

    hub: str
    producer: EventHubProducerClient
    turn: threading.Lock
    given_up: threading.Event = field(default_factory=threading.Event)
    """Set by its caller at its deadline or by close(): the send sends nothing more after its current batch."""
    opened: threading.Event = field(default_factory=threading.Event)
    """Set once its first batch was made: the producer's link is open, what the send then waits on is a partition's."""
    ended: bool = False
    set_aside: bool = False
    """Its caller gave up while it still ran, and its producer no longer serves the hub: the sender closes it."""


class AzureEventHubPublisher:
    """Sends with one `EventHubProducerClient` per hub, authenticated by Entra ID (no keys)."""

    def __init__(self, fully_qualified_namespace: str, credential: TokenCredential | None = None) -> None:
        self._namespace = fully_qualified_namespace
        self._credential = credential
        self._producers: dict[str, tuple[EventHubProducerClient, threading.Lock]] = {}
        self._lock = threading.Lock()
        # Daemon threads, not an executor's: an executor's workers are joined at interpreter exit, so a send stuck in
        # the SDK's link open would hold the process's exit (a restart) for minutes after its caller gave up.
        self._senders = threading.BoundedSemaphore(SENDER_THREADS)
        # The sends in flight, for close() to stop. Per hub, the one of them in the current producer's turn that its
        # caller gave up on (to set aside once the bound allows), and the turns of the producers set aside whose
        # senders still run.
        self._in_flight: set[_Sending] = set()
        self._closed = False
        self._stranded: dict[str, _Sending] = {}
        self._set_aside: dict[threading.Lock, str] = {}

    def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
        """Send grouped by partition key, in as few batches as fit; order is kept within a key. With a `timeout`,
        the caller waits no longer than that: for the hub's producer, for its link to open and for each send."""
        if not events:
            return
        ends = None if timeout is None else time.monotonic() + timeout
        # A producer is not safe to share between threads: the functions' thread pool takes turns. A turn taken by a
        # send that hangs on an outage would hold every other publisher to this hub for the SDK's retries (minutes),
        # past their callers' deadlines: with a timeout, the wait for the turn is bounded too.
        producer, lock = self._take_turn(hub, ends, timeout)
        # Enlisted once the turn is taken, so that a close() stops this send too, however long it waited for it.
        sending = _Sending(hub, producer, lock)
        try:
            self._enlist(sending)
        except BaseException:
            lock.release()
            raise
        if ends is None:
            try:
                _send_in_turn(sending, events, None)
            finally:
                lock.release()
                self._delist(sending)
            return
        # The SDK ends a send's retries by its `timeout`, but not the opening of the producer's link: the first
        # `create_batch` (it asks the link for its largest message) and a send after the link was lost open it under
        # the SDK's own retries and waits (minutes against a hub that is away), whatever the `timeout`. So the work
        # runs on a sender thread, which keeps the turn until the SDK gives up, and the caller (a module thread, ADR
        # 0026) stops waiting at its deadline; the producer is then set aside (SET_ASIDE_PER_HUB), so a later caller
        # sends on a fresh one instead of waiting out the stuck open.
        try:
            acquired = self._senders.acquire(timeout=max(ends - time.monotonic(), 0.0))
        except BaseException:
            self._delist(sending)
            lock.release()
            raise
        if not acquired:
            self._delist(sending)
            lock.release()  # its send never started (every sender busy): the turn is still this caller's
            raise PublishTimeoutError(f"{hub}: not sent by its deadline ({timeout:g} s): every sender was busy")
        done = threading.Event()
        failed: list[BaseException] = []

        def send() -> None:
            try:
                try:
                    _send_in_turn(sending, events, ends)
                finally:
                    self._end_turn(sending)
            except BaseException as exc:  # handed to the caller, if it still waits
                failed.append(exc)
            finally:
                self._delist(sending)
                self._sent(sending)
                self._senders.release()
                done.set()

        try:
            sender = threading.Thread(
                target=contextvars.copy_context().run, args=(send,), name="eventhub-send", daemon=True
            )
            sender.start()
        except BaseException:
            self._delist(sending)
            self._senders.release()
            lock.release()
            raise
        if not done.wait(timeout=max(ends - time.monotonic(), 0.0)):
            sending.given_up.set()
            self._abandon(sending)
            if sending.opened.is_set():
                # The SDK's own send timeout ends about when this deadline does, so a partition that does not answer
                # is most often found here rather than by the sender's PartitionTimeoutError.
                raise PartitionTimeoutError(
                    f"{hub}: not sent by its deadline ({timeout:g} s): the send did not end (the link was open)"
                )
            raise PublishTimeoutError(f"{hub}: not sent by its deadline ({timeout:g} s): the hub did not answer")
        if failed:
            raise failed[0]

    def close(self) -> None:
        """Close every producer; a send still in flight sends nothing more after its current batch, and a publish
        that comes after (or was waiting for its hub's turn) is refused. A producer set aside is closed by its sender,
        once the SDK's open it is stuck in ends (closing it here would wait for that open). Returns within
        CLOSE_WAIT_S: a producer whose close waits longer (its link stuck opening) is logged and left to its thread."""
        with self._lock:
            self._closed = True
            producers, self._producers = self._producers, {}
            for sending in self._in_flight:
                sending.given_up.set()
        ends = time.monotonic() + CLOSE_WAIT_S
        closing = [(hub, _close_on_thread(hub, producer)) for hub, (producer, _) in producers.items()]
        for hub, closer in closing:
            closer.join(timeout=max(ends - time.monotonic(), 0.0))
            if closer.is_alive():
                logger.warning(
                    "%s: the producer did not close within %g s (its lock is held, as by a link open stuck against"
                    " a hub that does not answer); it closes on its own thread once the SDK lets it",
                    hub,
                    CLOSE_WAIT_S,
                )

    def _take_turn(
        self, hub: str, ends: float | None, timeout: float | None
    ) -> tuple[EventHubProducerClient, threading.Lock]:
        """The hub's producer, its turn taken; with `ends`, PublishTimeoutError once it passes first.

        The wait is in slices: a producer set aside meanwhile (its sender stuck, its caller gone) keeps its turn until
        the SDK gives up, and a publish that waited for it takes the fresh producer's turn instead."""
        waited = False
        while True:
            with self._lock:
                if self._closed:
                    raise PublishTimeoutError(f"{hub}: the publisher is closed; nothing was sent")
                self._set_aside_stranded(hub)
            producer, turn = self._producer(hub)
            if ends is None:
                look = _TURN_LOOK_S
            else:
                left = ends - time.monotonic()
                if left <= 0:
                    if waited:
                        raise PublishTimeoutError(
                            f"{hub}: the producer was still busy with another send after {timeout:g} s"
                        )
                    raise PublishTimeoutError(f"{hub}: not sent by its deadline")
                look = min(left, _TURN_LOOK_S)
            if turn.acquire(timeout=look):
                with self._lock:
                    closed = self._closed
                if closed:
                    turn.release()
                    continue  # refused above, before a producer is built for a closed publisher
                if self._producer(hub)[1] is turn:
                    return producer, turn
                turn.release()  # taken as its sender gave it back, after its producer was set aside: not the hub's
            waited = True

    def _abandon(self, sending: _Sending) -> None:
        """Its caller gave up while its sender still runs: the producer is set aside if the bound allows, else once it
        does (when a publish to the hub looks again)."""
        with self._lock:
            if sending.ended:
                return  # it gave the turn back as its caller gave up: nothing is stuck
            self._stranded[sending.hub] = sending
            self._set_aside_stranded(sending.hub)

    def _set_aside_stranded(self, hub: str) -> None:
        """Under `_lock`: take the hub's producer whose caller gave up out of service, if the bound allows."""
        sending = self._stranded.get(hub)
        if sending is None or sum(1 for aside in self._set_aside.values() if aside == hub) >= SET_ASIDE_PER_HUB:
            return
        del self._stranded[hub]
        current = self._producers.get(hub)
        if current is None or current[1] is not sending.turn:
            return  # not a producer this publisher keeps for the hub: there is no other to build
        del self._producers[hub]
        sending.set_aside = True
        self._set_aside[sending.turn] = hub

    def _end_turn(self, sending: _Sending) -> None:
        """On the sender thread, once its send ended: it is no longer stranded, then the turn is given back. In that
        order, under `_lock`: a publish that takes the turn next sends on the producer, which a stale stranded entry
        would have set aside (and its sender closed) under that publish's send."""
        with self._lock:
            sending.ended = True
            if self._stranded.get(sending.hub) is sending:
                del self._stranded[sending.hub]
            sending.turn.release()

    def _sent(self, sending: _Sending) -> None:
        """On the sender thread, after `_end_turn`: a producer set aside is closed (its link with it)."""
        with self._lock:
            set_aside = sending.set_aside  # final: set only on a stranded send, which this no longer is
        if not set_aside:
            return
        try:
            sending.producer.close()
        except Exception:  # a link that never opened may fail to close; the producer is dropped all the same
            logger.warning("%s: a producer set aside did not close cleanly", sending.hub, exc_info=True)
        finally:
            with self._lock:
                self._set_aside.pop(sending.turn, None)

    def _enlist(self, sending: _Sending) -> None:
        """Count a send in flight, for close() to stop; PublishTimeoutError once the publisher is closed."""
        with self._lock:
            if self._closed:
                raise PublishTimeoutError(f"{sending.hub}: the publisher is closed; nothing was sent")
            self._in_flight.add(sending)

    def _delist(self, sending: _Sending) -> None:
        with self._lock:
            self._in_flight.discard(sending)

    def _producer(self, hub: str) -> tuple[EventHubProducerClient, threading.Lock]:
        with self._lock:
            if hub not in self._producers:
                from azure.eventhub import EventHubProducerClient

                if self._credential is None:
                    from azure.identity import DefaultAzureCredential

                    self._credential = DefaultAzureCredential()
                client = EventHubProducerClient(self._namespace, hub, self._credential)
                self._producers[hub] = (client, threading.Lock())
            return self._producers[hub]


def _close_on_thread(hub: str, producer: EventHubProducerClient) -> threading.Thread:
    """Start `producer`'s close on a daemon thread of its own (a close stuck behind the link's open must not hold the
    process's exit), for the caller to wait for as long as it will."""

    def close() -> None:
        try:
            producer.close()
        except Exception:  # a link that never opened may fail to close; the producer is dropped all the same
            logger.warning("%s: a producer did not close cleanly", hub, exc_info=True)

    closer = threading.Thread(target=close, name="eventhub-close", daemon=True)
    closer.start()
    return closer


def _send_in_turn(sending: _Sending, events: Sequence[OutboundEvent], ends: float | None) -> None:
    """Send `events` in the hub's turn, which the caller took and gives back; `sending.opened` is set once a batch is
    made (the producer's link is open)."""
    from azure.eventhub.exceptions import ConnectError, ConnectionLostError

    producer, hub = sending.producer, sending.hub
    try:
        for partition_key, group in _by_partition_key(events).items():
            for batch in _batches(producer, partition_key, group):
                sending.opened.set()
                if sending.given_up.is_set():
                    # Its caller has failed the publish at its deadline, or the publisher was closed under a caller
                    # still waiting, who must not read the unsent rest as sent: nothing more goes out.
                    raise PublishTimeoutError(
                        f"{hub}: the publish was given up (its deadline, or the publisher closed)"
                    )
                if ends is None:
                    producer.send_batch(batch)
                else:
                    _send_within(producer, batch, hub, ends)
    except (ConnectionLostError, ConnectError) as exc:
        if ends is None:
            raise  # an untimed publish raises the SDK's own error, as it always did
        # The link's first open is made by `create_batch`: a hub refusing it (refused, unresolvable, its credential
        # refused) fails every key alike, as a link lost under a send does.
        raise PublishLinkError(f"{hub}: the hub's link failed: {exc}") from exc


def _left(hub: str, ends: float) -> float:
    """Seconds until `ends` (monotonic); PublishTimeoutError once it has passed."""
    left = ends - time.monotonic()
    if left <= 0:
        raise PublishTimeoutError(f"{hub}: not sent by its deadline")
    return left


def _send_within(producer: EventHubProducerClient, batch: EventDataBatch, hub: str, ends: float) -> None:
    """`send_batch` bounded by `ends`: the SDK's send `timeout` also ends its retries (a pause that would outlast it is
    not taken)."""
    from azure.eventhub.exceptions import ConnectError, ConnectionLostError, OperationTimeoutError

    # Never 0: the SDK reads a zero timeout as none at all.
    try:
        producer.send_batch(batch, timeout=_left(hub, ends))
    except OperationTimeoutError as exc:
        raise PartitionTimeoutError(f"{hub}: not sent by its deadline: {exc}") from exc
    except (ConnectionLostError, ConnectError) as exc:
        # What the SDK raises for a link detached or a connection dropped under the send (and for its open again),
        # once its retries gave up: a timeout there is raised as OperationTimeoutError instead.
        raise PublishLinkError(f"{hub}: the send failed on the hub's link: {exc}") from exc


def _by_partition_key(events: Sequence[OutboundEvent]) -> dict[str | None, list[OutboundEvent]]:
    groups: dict[str | None, list[OutboundEvent]] = {}
    for event in events:
        groups.setdefault(event.partition_key, []).append(event)
    return groups


def _batches(
    producer: EventHubProducerClient, partition_key: str | None, events: list[OutboundEvent]
) -> Iterator[EventDataBatch]:
    from azure.eventhub import EventData

    batch = producer.create_batch(partition_key=partition_key)
    for event in events:
        data = EventData(event.body_bytes())
        data.properties = {key: value for key, value in event.properties.items()}
        try:
            batch.add(data)
        except ValueError:  # the batch is full
            if len(batch) == 0:
                raise  # a single event larger than the batch limit can never be sent
            yield batch
            batch = producer.create_batch(partition_key=partition_key)
            batch.add(data)
    if len(batch):
        yield batch


@lru_cache(maxsize=1)
def get_publisher() -> EventPublisher:
    """The process-wide publisher for `QP_EVENTHUB_BACKEND` (local: the devhost's Postgres log)."""
    settings = get_settings()
    if settings.QP_EVENTHUB_BACKEND == "azure":
        assert settings.EventHubConnection__fullyQualifiedNamespace is not None  # checked by Settings
        return AzureEventHubPublisher(settings.EventHubConnection__fullyQualifiedNamespace)
    return LocalEventHubPublisher()
