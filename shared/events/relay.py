# intent_ref: platform.events
"""The outbox relay: publish each tenant's unpublished domain events to `platform-events`, then mark them.

Publish, then mark, in the tenant's own transaction: a crash or a failed send between the two leaves the events
unpublished, so they go again with the same id (at least once; consumers dedupe by `id`). The rows are locked
(`FOR UPDATE SKIP LOCKED`) and each tenant is relayed by one relay at a time (a row lock on its lock row), so two
relays never send the same events concurrently; a tenant's events leave in the order their transactions took an id
(their first write), each once every older transaction has ended, so none that commits later is sent before one it
precedes. Transaction ids are server-wide: any long write transaction on the Postgres server holds every tenant's
events (and webhook deliveries) back until it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from time import monotonic
from typing import Any, Literal, cast
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.db import tenant_locks
from shared.db.session import IdleTransactionEndedError, platform_transaction, tenant_transaction
from shared.events import webhook_store
from shared.events.publisher import (
    PLATFORM_EVENTS_HUB,
    EventPublisher,
    OutboundEvent,
    PartitionTimeoutError,
    PropertyValue,
    PublishLinkError,
    PublishTimeoutError,
    get_publisher,
)
from shared.observability.tracing import TRACEPARENT

_PENDING_TENANTS = "SELECT tenant_id FROM app.outbox_pending_tenants(%s) AS pending (tenant_id)"
# The tenants to relay now, in their order (migration 0054): those still backing off are left out.
_TURNS = (
    "SELECT tenant_id, deferred FROM app.outbox_relay_turns(%s) WITH ORDINALITY AS turn (tenant_id, deferred, n)"
    " ORDER BY n"
)
# The backoff counts from the failure, on the database's clock, which every instance shares.
_DEFER = (
    "INSERT INTO control.relay_deferrals AS d (tenant_id, failures, failed_at, retry_at)"
    " VALUES (%(tenant)s, 1, now(), now() + make_interval(secs => %(base)s))"
    " ON CONFLICT (tenant_id) DO UPDATE SET failures = d.failures + 1, failed_at = now(),"
    " retry_at = now() + make_interval(secs => least(%(base)s * power(2, least(d.failures, 30)), %(most)s))"
)
_UNDEFER = "DELETE FROM control.relay_deferrals WHERE tenant_id = %s"
# A relay that finds another one on this tenant moves on; the other one is sending these events already. Only the
# events of transactions older than every one still running, in transaction order (migration 0040): an event that
# commits later can no longer sort before one already sent.
_UNPUBLISHED = (
    "SELECT id, event_type, subject, data, occurred_at, traceparent FROM app.outbox WHERE published_at IS NULL"
    " AND txid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY txid, position LIMIT %s FOR UPDATE SKIP LOCKED"
)
_MARK = "UPDATE app.outbox SET published_at = clock_timestamp() WHERE id = ANY(%s) AND published_at IS NULL"
# The database's transient failures (_databases_failure). The database away: connection exceptions, insufficient
# resources, an administrator's or a crash's shutdown, a server starting up. One transaction's bad luck: a
# serialization failure, a deadlock's victim.
_DATABASE_AWAY_CLASSES = frozenset({"08"})
# Out of memory (53200) is left out: a tenant's own large batch can cause it, in every run.
_DATABASE_AWAY_STATES = frozenset({"53100", "53300", "57P01", "57P02", "57P03"})
_TRANSACTION_LOST_STATES = frozenset({"40001", "40P01"})

logger = logging.getLogger(__name__)

RELAY_PUBLISH_TIMEOUT_S = 120.0
"""The relay's publish is given up after this: a hub link whose open is stuck (a hub that accepts and never answers)
held it, untimed, for the SDK's retries (15 minutes and more), and with it the tenant's transaction past its 5-minute
idle bound (ADR 0043) and the hub's turn from every timed publish. It covers what ADR 0043 counted for a relay send
(the SDK's 60 s send with up to 60 s for its first token) and stays well under that idle bound, so the transaction is
still there to roll back (its events go again on the next run) and, for a send that ends near the bound, to record
the deliveries and the mark. Given up, the stuck producer is set aside as a timed caller's is."""

RELAY_RUN_BUDGET_S = 300.0
"""A run starts no tenant's publish after this long: a hub whose link opens but whose partitions do not answer (each
tenant's events go to the partition of its id) costs a publish's deadline per tenant, 100 tenants over three hours,
past the host's 1-hour bound for a run. The tenants left wait for the next run."""

RELAY_BACKOFF_S = 30.0
"""A tenant whose publish failed for a reason of its own (its partition not answering, say; not the hub's silence, its
link's failure nor the database's) is not relayed again for this long after its first failure, twice as long after
each further one in a row, at most RELAY_BACKOFF_MAX_S; a publish of its events that goes ends it. Tried in every run,
after the other tenants, its partition's deadline ended every run, and the timer's next run (and every other tenant's
new events and webhooks) waited for it as long as that partition stayed stuck. Half a minute: a partition that failed
once (moved between the hub's nodes, say) is usually back by then, and its tenant waits little more."""

RELAY_BACKOFF_MAX_S = 900.0
"""The longest backoff: reached after six failures in a row (about 17 minutes of them), it lets a partition stuck for
good cost the other tenants one publish's deadline per 15 minutes (about an eighth of their time at most), and a
tenant whose partition answers again waits at most 15 minutes for its turn."""


@dataclass(frozen=True)
class RelayResult:
    """What one relay run did."""

    published: int
    tenants: int
    failed_tenants: int


def envelope(tenant_id: UUID, row: DictRow) -> OutboundEvent:
    """The event as it goes on the hub: the outbox row id is the event id, in the body and in the properties."""
    event_id = str(row["id"])
    occurred_at: datetime = row["occurred_at"]
    body: dict[str, Any] = {
        "id": event_id,
        "type": row["event_type"],
        "time": occurred_at.isoformat(),
        "tenant_id": str(tenant_id),
        "subject": row["subject"],
        "data": row["data"],
    }
    properties: dict[str, PropertyValue] = {
        "event_id": event_id,
        "event_type": row["event_type"],
        "tenant_id": str(tenant_id),
        "subject": row["subject"],
    }
    if row.get("traceparent"):
        properties[TRACEPARENT] = row["traceparent"]  # where the Azure SDKs carry it: a consumer continues the trace
    return OutboundEvent(body, str(tenant_id), properties)


def pending_tenants(max_tenants: int, *, pool: ConnectionPool[Any] | None = None) -> list[UUID]:
    """Ids of the tenants with unpublished events, oldest waiting first (no row of theirs is read here)."""
    with platform_transaction(pool=pool) as conn:
        return [UUID(str(row["tenant_id"])) for row in conn.execute(_PENDING_TENANTS, (max_tenants,)).fetchall()]


def relay_tenant(
    tenant_id: UUID, publisher: EventPublisher, *, batch_size: int = 100, pool: ConnectionPool[Any] | None = None
) -> int:
    """Publish up to `batch_size` of the tenant's unpublished events and mark them; returns how many went.

    The send gives up after RELAY_PUBLISH_TIMEOUT_S."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        if not tenant_locks.try_hold(conn, "outbox-relay"):  # another relay holds this tenant's
            return 0
        rows = conn.execute(_UNPUBLISHED, (batch_size,)).fetchall()
        if not rows:
            return 0
        envelopes = [envelope(tenant_id, row) for row in rows]
        publisher.publish(PLATFORM_EVENTS_HUB, envelopes, timeout=RELAY_PUBLISH_TIMEOUT_S)
        # Webhook deliveries are recorded with the mark (ADR 0030): an event marked published has its deliveries.
        webhook_store.fan_out(conn, [cast(dict[str, Any], event.body) for event in envelopes])
        conn.execute(_MARK, ([row["id"] for row in rows],))
        return len(rows)


def relay_pending(
    publisher: Callable[[], EventPublisher] | None = None,
    *,
    batch_size: int = 100,
    max_tenants: int = 100,
    max_rounds: int = 10,
    pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> RelayResult:
    """Relay every tenant's waiting events, one batch per tenant per round, until none wait or `max_rounds`;
    `pool` serves the tenant transactions, `control_pool` the control plane's (the process-wide pools when None),
    `publisher` gives the publisher (the process's when None).

    A tenant whose events cannot be sent is logged and left for a later run: unless its send failed on the hub's link
    (`PublishLinkError`: its place in the next run is kept) or its transaction met a transient failure of the database
    (no connection in time, the connection lost, a deadlock's victim: the run ends there, the tenant keeps its place),
    no run of any instance relays it before its backoff
    (RELAY_BACKOFF_S, doubling per failure in a row, at most RELAY_BACKOFF_MAX_S; recorded in
    `control.relay_deferrals`) has passed, and then after the other tenants, least recently failed first; a publish of
    its events that goes clears it. The other tenants still go, also when its send timed out (the partition of its id
    did not answer),
    unless the hub failed as a whole: the run ends at a publish not done by its deadline for the whole hub (its turn
    still busy, no sender free, its link never opened: `PublishTimeoutError` other than `PartitionTimeoutError`)
    rather than wait out the deadline again for each tenant, and starts no publish after RELAY_RUN_BUDGET_S.
    """
    publisher_of = publisher or get_publisher
    ends = monotonic() + RELAY_RUN_BUDGET_S
    published = 0
    seen: set[UUID] = set()
    failed: set[UUID] = set()
    for _ in range(max_rounds):
        # A tenant that failed is left for the next run, as the docstring says: retried every round, its oldest events
        # came first each time and every other tenant waited out its send timeout again.
        turns = [
            (tenant_id, deferred)
            for tenant_id, deferred in _turns(max_tenants, control_pool)
            if tenant_id not in failed
        ]
        tenants = [tenant_id for tenant_id, _ in turns]
        sent_this_round = 0
        for tenant_id, deferred in turns:
            if monotonic() >= ends:
                logger.warning(
                    "outbox relay: the run's %g s were spent; the events of %d tenants wait for the next run",
                    RELAY_RUN_BUDGET_S,
                    len(tenants) - tenants.index(tenant_id),
                )
                return RelayResult(published=published + sent_this_round, tenants=len(seen), failed_tenants=len(failed))
            seen.add(tenant_id)
            try:
                sent = relay_tenant(tenant_id, publisher_of(), batch_size=batch_size, pool=pool)
            except PartitionTimeoutError:
                # The hub's link was open and the send to this tenant's partition did not end: that partition may be
                # the only one not answering, and the other tenants' events (most on other partitions) still go.
                logger.exception("outbox relay: the events of tenant %s were not sent by their deadline", tenant_id)
                failed.add(tenant_id)
                _defer(tenant_id, control_pool)
            except PublishTimeoutError:
                # Not this tenant's trouble: the hub did not answer (or its turn, or the senders, stayed busy), for
                # every tenant alike, and waiting out the deadline once per tenant would keep a run against a silent
                # hub going for hours (100 tenants of 120 s each; the host ends a run after 1 h).
                logger.exception("outbox relay: the events of tenant %s were not sent by their deadline", tenant_id)
                failed.add(tenant_id)
                return RelayResult(published=published + sent_this_round, tenants=len(seen), failed_tenants=len(failed))
            except PublishLinkError:
                # The hub's link was lost under the send and the SDK gave it up: nothing of the tenant's partition's,
                # so the tenant is not deferred (it keeps its place in the next run's order) and the other tenants
                # still go, each send opening the link again.
                logger.exception(
                    "outbox relay: the events of tenant %s were not sent: the hub's link failed", tenant_id
                )
                failed.add(tenant_id)
            except Exception as exc:
                failed.add(tenant_id)
                failure = _databases_failure(exc)
                if failure == "away":
                    # Not this tenant's to back off for: every tenant's transaction runs on the same database (and
                    # waits for the same pool), so the others would only meet it too; it rolled back, its events
                    # wait, and the next run tries again.
                    logger.warning(
                        "outbox relay: the database failed tenant %s's transaction; the run ends: %s", tenant_id, exc
                    )
                    return RelayResult(
                        published=published + sent_this_round, tenants=len(seen), failed_tenants=len(failed)
                    )
                if failure == "lost":
                    # One transaction's bad luck, not its tenant's: the others go on, and it keeps its place in the
                    # next run (ended there, a deadlock that recurs would have kept every other tenant back).
                    logger.warning("outbox relay: tenant %s's transaction was lost; next run: %s", tenant_id, exc)
                    continue
                # Its partition's send failed, or something of its own did: one tenant's trouble must not keep the
                # others' events back.
                logger.exception("outbox relay: the events of tenant %s could not be published", tenant_id)
                _defer(tenant_id, control_pool)
            else:
                sent_this_round += sent
                if deferred and sent:
                    _undefer(tenant_id, control_pool)
        published += sent_this_round
        if sent_this_round == 0:
            break
    return RelayResult(published=published, tenants=len(seen), failed_tenants=len(failed))


def _databases_failure(exc: Exception) -> Literal["away", "lost"] | None:
    """Whether `exc` is the database's transient failure, which any tenant's transaction might have met, rather than
    the tenant's own: "away" for no pooled connection in time (`PoolTimeout`), the connection lost or closed under it,
    the server shutting down, not yet taking connections, out of connections or of disk; "lost" for a serialization
    failure or a deadlock's victim (this transaction's alone); None otherwise.

    Other database errors still back the tenant off: one that its own rows cause (a statement timeout on them, say)
    would come back in every run, and, its tenant first in the order, end every run before any other tenant's turn."""
    if isinstance(exc, PoolTimeout):
        return "away"
    if not isinstance(exc, psycopg.OperationalError):
        return None
    state = exc.sqlstate
    if state in _TRANSACTION_LOST_STATES:
        return "lost"
    if isinstance(exc, IdleTransactionEndedError):
        # Its transaction sat idle past the server's bound: its own publish took that long, and would again.
        return None
    # No state: raised by the driver itself, the connection lost or closed (as our session wrappers raise it).
    if state is None or state[:2] in _DATABASE_AWAY_CLASSES or state in _DATABASE_AWAY_STATES:
        return "away"
    return None


def _turns(max_tenants: int, control_pool: ConnectionPool[Any] | None) -> list[tuple[UUID, bool]]:
    """The tenants with events waiting but for those backing off, oldest waiting first, then those whose last publish
    failed, least recently failed first; each with whether it was deferred.

    Deferred tenants not in their order of waiting: a tenant deferred once, its partition answering again, came after
    every older deferred tenant in every run, and three whose partitions still timed out spent each run's budget
    before its turn, for as long as theirs did not answer."""
    with platform_transaction(pool=control_pool) as conn:
        return [
            (UUID(str(row["tenant_id"])), bool(row["deferred"]))
            for row in conn.execute(_TURNS, (max_tenants,)).fetchall()
        ]


def _defer(tenant_id: UUID, control_pool: ConnectionPool[Any] | None) -> None:
    """Record the tenant's failure: it is not relayed again, by any instance, until its backoff has passed."""
    try:
        with platform_transaction(pool=control_pool) as conn:
            conn.execute(_DEFER, {"tenant": tenant_id, "base": RELAY_BACKOFF_S, "most": RELAY_BACKOFF_MAX_S})
    except Exception:  # the run goes on with the other tenants; this one is left out of its later rounds all the same
        logger.exception("outbox relay: the failure of tenant %s could not be recorded", tenant_id)


def _undefer(tenant_id: UUID, control_pool: ConnectionPool[Any] | None) -> None:
    """Forget the tenant's failures once a publish of its events went: its next failure backs off from the start."""
    try:
        with platform_transaction(pool=control_pool) as conn:
            conn.execute(_UNDEFER, (tenant_id,))
    except Exception:  # its events went; left recorded, it is relayed after the others until a later publish clears it
        logger.exception("outbox relay: the failures of tenant %s could not be cleared", tenant_id)
