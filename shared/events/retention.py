# intent_ref: platform.events
"""Retention of delivered webhook deliveries and published domain events (ADR 0049): each tenant's, in its own
transactions, a bounded batch at a time.

A delivery keeps its event's whole payload, one per subscription per event, and an outbox row stays once the relay
has published it: nothing else deleted either, so both tables grew with every event. The timer `event_retention` runs
`delete_past_retention`, which deletes what is past its period (fixed in migration 0073, as the finder's answers
depend on it):

- a webhook delivery delivered more than `DELIVERED_KEPT_DAYS` ago. Pending deliveries stay, and failed ones too: a
  failed delivery is what its disabled subscription resends first when it is enabled again (ADR 0030);
- an outbox row published more than `PUBLISHED_KEPT_DAYS` ago. Unpublished rows stay; the relay, the outbox's only
  reader, reads only those.

The SQL is the pinned tenant's functions' (the runtime holds DELETE on neither table, migration 0046) and the finder's,
which answers tenant ids only, to the control plane.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import takewhile
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

from shared.db.session import bounded_lock_waits, platform_transaction, tenant_transaction
from shared.db.tenant_passes import each_tenant

DELIVERED_KEPT_DAYS = 7
"""How long a delivered webhook delivery stays in the delivery log (fixed in migration 0073)."""
PUBLISHED_KEPT_DAYS = 7
"""How long an outbox row stays once published (fixed in migration 0073)."""

_DUE_TENANTS = "SELECT tenant_id FROM app.retention_due_tenants(%s) AS due (tenant_id)"
_DELETE_DELIVERIES = "SELECT app.delete_delivered_webhook_deliveries(%s) AS removed"
_DELETE_EVENTS = "SELECT app.delete_published_outbox_events(%s) AS removed"

MAX_TENANTS = 100
"""Tenants one run takes (those whose oldest row is the most overdue); the next run takes the rest."""
BATCH_ROWS = 500
"""Rows one statement deletes of one tenant's table (the oldest first). A tenant's turn deletes a batch of each table
in one short transaction, which holds those rows only as long as their deletes take."""
MAX_ROWS_PER_RUN = 100_000
"""Rows one run deletes at most, of all tenants and both tables: what a run writes (and the WAL it makes) is bounded
whatever the backlog. A first turn of every tenant a run takes fits in it (MAX_TENANTS x 2 x BATCH_ROWS); every five
minutes it lets 333 rows a second go, the most the two tables can take in and stay bounded: raise it if the
platform's event rate nears that."""
RUN_BUDGET_S = 60.0
"""How long a run goes on giving tenants with a backlog further turns. Every tenant it found gets its first turn
however long the others took; then the tenants whose batches were full take turns again, round by round, until the
budget or MAX_ROWS_PER_RUN is spent: a tenant with a backlog never takes the run from the others."""


@dataclass(frozen=True)
class RetentionResult:
    """What one run deleted."""

    deliveries: int
    events: int
    tenants: int
    failed_tenants: int
    rows_left: bool
    """Whether the run stopped at its budget or its bound with rows of a tenant it took still past their period (the
    tenants past `max_tenants` wait for the next run too, uncounted)."""


def delete_past_retention(
    *,
    max_tenants: int = MAX_TENANTS,
    max_rows: int = MAX_ROWS_PER_RUN,
    pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> RetentionResult:
    """Delete up to `max_rows` delivered deliveries and published events past their periods, of up to `max_tenants`
    tenants; `pool` serves the tenants' transactions, `control_pool` the finder's (the process-wide pools when None).
    A tenant whose turn fails (or waits for a lock past bounded_lock_waits' bound) is logged and left for the next
    run; the others go on."""
    deadline = time.monotonic() + RUN_BUDGET_S
    with platform_transaction(pool=control_pool) as conn:
        tenants = [UUID(str(row["tenant_id"])) for row in conn.execute(_DUE_TENANTS, (max_tenants,))]
    # Per tenant, the statements whose last batch was full: those may have more.
    pending = {tenant_id: [_DELETE_DELIVERIES, _DELETE_EVENTS] for tenant_id in tenants}
    removed = {_DELETE_DELIVERIES: 0, _DELETE_EVENTS: 0}
    left = max_rows
    failed = 0
    first_round = True

    def within_budget() -> bool:
        return left > 0 and (first_round or time.monotonic() < deadline)

    def take_turn(tenant_id: UUID) -> None:
        """A batch of each of the tenant's pending statements in one transaction, counted once it committed."""
        nonlocal left
        turn: dict[str, tuple[int, int]] = {}  # statement: (batch, rows deleted)
        with tenant_transaction(tenant_id, pool=pool) as conn:
            for statement in pending[tenant_id]:
                batch = min(BATCH_ROWS, left - sum(count for _, count in turn.values()))
                if batch <= 0:
                    break
                row = conn.execute(statement, (batch,)).fetchone()
                turn[statement] = (batch, int(row["removed"]) if row is not None else 0)
        for statement, (batch, count) in turn.items():
            removed[statement] += count
            left -= count
            if count < batch:  # nothing more past its period (or what is left is held: the next run's)
                pending[tenant_id].remove(statement)
        if not pending[tenant_id]:
            del pending[tenant_id]

    with bounded_lock_waits():  # tenants go one after another: one's lock must not hold up the others
        while pending and within_budget():
            # Lazily, so that the budget is looked at before each tenant's turn, not once before the round.
            turns = each_tenant(takewhile(lambda _: within_budget(), list(pending)), take_turn, what="event retention")
            for tenant_id in turns.failed:  # left for the next run
                del pending[tenant_id]
            failed += turns.failed_count
            first_round = False
    return RetentionResult(
        deliveries=removed[_DELETE_DELIVERIES],
        events=removed[_DELETE_EVENTS],
        tenants=len(tenants),
        failed_tenants=failed,
        rows_left=bool(pending),
    )
