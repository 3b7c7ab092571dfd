# intent_ref: platform.execution
"""Admission into the engine (ADR 0041): a tenant's top-level executions enter the engine at most its starting share
at a time; past it they wait `pending`, queued, and are let in oldest first as the tenant's earlier ones get under
way. A burst of one tenant's starts would otherwise put hundreds of start episodes and first dispatches at once into
the Durable backend's first-come, first-served queues, in front of every other tenant's work; once under way, an
execution's module work waits in the tenant's own share of the module threads (ADR 0038), where it holds up no one.

Letting in is a claim, committed before anything starts: the queued flag cleared and the start claimed, under the
tenant's `executions` lock (the one its starts count under, so a start and an admission never both see the same
room). From then on the execution is an ordinary start; if its starter dies before the orchestration starts, the
sweeper takes it over as any stalled start. Admission runs where an execution leaves `pending` (the recording
activities, which have a Durable client), and every second from a timer, which also catches the rest (an execution
the sweeper or a cancel ended, a start the backend refused).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

from shared.db import tenant_locks
from shared.db.session import platform_transaction, tenant_transaction
from shared.engine.executions import TERMINAL
from shared.engine.machine import DispatchAnswer, DispatchSteps
from shared.engine.protocol import ORCHESTRATOR
from shared.engine.start import execution_counts, starting_limit
from shared.engine.sweeper import DurableClient, start_input
from shared.tenants.repository import get_tenant

logger = logging.getLogger(__name__)

MAX_TENANTS = 100
"""Tenants one timer run lets executions in for (those waiting longest first); the next run takes the rest."""

_QUEUED_TENANTS = "SELECT tenant_id FROM app.execution_queued_tenants(%s) AS queued (tenant_id)"
_ANY_QUEUED = "SELECT EXISTS (SELECT 1 FROM app.executions WHERE queued AND status = 'pending') AS queued"
# Oldest first; a row a cancel holds is passed over (it is about to end) rather than waited for. The CTE is
# materialized: as an IN subquery, the planner may run the locking LIMIT more than once and update more rows.
_LET_IN = (
    "WITH next AS MATERIALIZED (SELECT id FROM app.executions WHERE queued AND status = 'pending'"
    " ORDER BY created_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
    " UPDATE app.executions e SET queued = false, start_claimed_at = clock_timestamp() FROM next"
    " WHERE e.id = next.id RETURNING e.id, e.created_at"
)


@dataclass(frozen=True)
class AdmissionRun:
    """What one timer run did: tenants with a queue, executions started, tenants whose admission failed."""

    tenants: int
    started: int
    failed_tenants: int


def let_in(tenant_id: UUID, *, pool: ConnectionPool[Any] | None = None) -> list[UUID]:
    """Claim as many of the tenant's queued executions as its starting share has room for, oldest first; the claims
    commit before the caller starts anything."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        row = conn.execute(_ANY_QUEUED).fetchone()
        if row is None or not row["queued"]:
            return []  # the common case, one indexed probe: nothing of this tenant waits
        tenant = get_tenant(conn, tenant_id)
        if tenant is None:
            return []
        tenant_locks.hold(conn, "executions")
        room = starting_limit(tenant.quotas) - execution_counts(conn).starting
        if room <= 0:
            return []
        rows = conn.execute(_LET_IN, (room,)).fetchall()
    return [row["id"] for row in sorted(rows, key=lambda r: (r["created_at"], r["id"]))]


async def admit(client: DurableClient, tenant_id: UUID, *, pool: ConnectionPool[Any] | None = None) -> int:
    """Let in what the tenant's starting share has room for and start their orchestrations; returns how many
    started. A start the backend refuses stays claimed, for the sweeper to take over once its claim is stale."""
    started = 0
    for execution_id in await asyncio.to_thread(let_in, tenant_id, pool=pool):
        orchestration_input = await asyncio.to_thread(start_input, tenant_id, execution_id, pool=pool)
        if not isinstance(orchestration_input, dict):
            # Cancelled while it waited, or it can no longer start (ended failed, with the cause, by start_input).
            continue
        try:
            await client.start_new(ORCHESTRATOR, str(execution_id), orchestration_input)
        except Exception:
            logger.exception("admission: could not start the orchestration of execution %s", execution_id)
            continue
        started += 1
    return started


def moved(batch: DispatchSteps, answer: DispatchAnswer) -> bool:
    """Whether a dispatch moved its execution: out of `pending` (its first), or to its end (its own level's, or a
    level it carried on to)."""
    return batch.status is not None or _ended(answer)


def _ended(answer: DispatchAnswer) -> bool:
    return answer.status.value in TERMINAL or any(_ended(carried.answer) for carried in answer.then)


async def admit_after_move(client: DurableClient, tenant_id: UUID) -> None:
    """After an execution of the tenant moved on (out of `pending`, to its end): let the next of its queue in at
    once. A failure is logged, never raised (the move is recorded; the timer's next run lets them in)."""
    try:
        await admit(client, tenant_id)
    except Exception:
        logger.exception("admission: could not let in the queued executions of tenant %s", tenant_id)


def queued_tenants(
    max_tenants: int = MAX_TENANTS,
    *,
    control_pool: ConnectionPool[Any] | None = None,
) -> list[UUID]:
    """Ids of the tenants with a queued execution, those waiting longest first (no row of theirs is read here)."""
    with platform_transaction(pool=control_pool) as conn:
        rows = conn.execute(_QUEUED_TENANTS, (max_tenants,)).fetchall()
    return [UUID(str(row["tenant_id"])) for row in rows]


async def admit_queued(
    client: DurableClient,
    *,
    pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> AdmissionRun:
    """One timer run: let in what every tenant with a queue has room for. A tenant whose admission fails is logged
    and left for the next run; the others still go."""
    tenants = await asyncio.to_thread(queued_tenants, control_pool=control_pool)
    started = failed = 0
    for tenant_id in tenants:
        try:
            started += await admit(client, tenant_id, pool=pool)
        except Exception:  # one tenant's trouble (or a backend outage) must not keep the others queued
            logger.exception("admission: the queued executions of tenant %s could not be let in", tenant_id)
            failed += 1
    return AdmissionRun(tenants=len(tenants), started=started, failed_tenants=failed)
