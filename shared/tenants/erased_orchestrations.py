# intent_ref: platform.tenants
"""Purging the orchestrations that may outlive their erased tenant (ADR 0046).

An orchestration that may outlive its erased tenant is recorded in `control.erased_tenant_orchestrations` (migration
0069): a start the sweeper cut off by its bound (the task hub may apply it until the client's own timeout, after the
sweeper's one look at the tenant), a start that failed (a connection reset, a 500, the client's own timeout: the
task hub may have created the instance all the same) on a request's path as on the sweeper's, and an erased start's
or an erasure's purge that could not finish. The sweeper, which holds the Durable client, runs
`purge_erased_orchestrations` every run: once a record is due, its orchestration is terminated and purged while its
tenant is gone (looked at when the record is read and again right before), and the record dropped once that purge
finds it gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction
from shared.tenants.offboarding import NOTE_ERASED_ORCHESTRATION, purge_orchestrations

logger = logging.getLogger(__name__)

LATE_START_S = 300.0
"""How long after a start cut off its orchestration may still land: the Durable client's own timeout (240 s), as long
as the task hub may go on applying a call its client gave up on, and a margin."""
MAX_ORCHESTRATIONS = 20
"""Recorded orchestrations one sweeper run purges (the least recently tried first); the next run takes the rest."""

_NOTE_ORCHESTRATION = NOTE_ERASED_ORCHESTRATION
# A tenant that is there: its orchestration is its own, and that tenant's erasure lists and purges it with its other
# executions (a start due has landed by then, or never will). Not a tenant marked for erasure: its erasure records the
# executions it deletes, batch by batch (ADR 0012, amended 2026-12-08), and a host killed between two batches leaves
# the tenant there, its deleted executions listed nowhere else; their records wait for the tenant to be gone.
_FORGET_LIVING = (
    "DELETE FROM control.erased_tenant_orchestrations r WHERE r.due_at <= now()"
    " AND EXISTS (SELECT 1 FROM app.tenants t WHERE t.id = r.tenant_id AND t.erasing_since IS NULL)"
)
# Its tenant looked at again in the same statement: a note of a tenant still there committed after _FORGET_LIVING ran
# is seen by this read-committed statement too, and that living tenant's orchestration was terminated and purged.
_DUE_ORCHESTRATIONS = (
    "SELECT instance_id, tenant_id, noted_at FROM control.erased_tenant_orchestrations r WHERE r.due_at <= now()"
    " AND NOT EXISTS (SELECT 1 FROM app.tenants t WHERE t.id = r.tenant_id)"
    " ORDER BY r.swept_at NULLS FIRST, r.due_at LIMIT %s"
)
_TENANT_THERE = "SELECT EXISTS (SELECT 1 FROM app.tenants WHERE id = %s) AS there"
# Dropped only as read: a note since (a start cut off again, a purge that failed again) keeps it.
_DROP_ORCHESTRATION = "DELETE FROM control.erased_tenant_orchestrations WHERE instance_id = %s AND noted_at = %s"
# Purged by the erasure itself after its rows went: noted due at once then (a record due later, of a start cut off,
# is kept: that start may still land).
_FORGET_PURGED = (
    "DELETE FROM control.erased_tenant_orchestrations WHERE tenant_id = %s AND instance_id = ANY(%s)"
    " AND due_at <= now()"
)
_TRIED_ORCHESTRATION = (
    "UPDATE control.erased_tenant_orchestrations SET swept_at = now(), failure = %s WHERE instance_id = %s"
)


def note_erased_orchestration(
    tenant_id: UUID, instance_id: UUID | str, *, after_s: float = 0.0, control_pool: ConnectionPool[Any] | None = None
) -> bool:
    """Record that orchestration `instance_id` of `tenant_id` may outlive the tenant, to be purged from `after_s` on
    (a start cut off or failed: LATE_START_S) by the sweeper (`purge_erased_orchestrations`); answers whether it was
    recorded (a failure is logged, with the id, for an operator)."""
    return note_erased_orchestrations(tenant_id, [instance_id], after_s=after_s, control_pool=control_pool)


def note_erased_orchestrations(
    tenant_id: UUID,
    instance_ids: Sequence[UUID | str],
    *,
    after_s: float = 0.0,
    control_pool: ConnectionPool[Any] | None = None,
) -> bool:
    """`note_erased_orchestration` for each of `instance_ids`, in one transaction (an erasure's purge that failed
    leaves up to all of its executions' orchestrations); answers whether they were recorded."""
    if not instance_ids:
        return True
    try:
        with platform_transaction(pool=control_pool) as conn, conn.cursor() as cursor:
            cursor.executemany(
                _NOTE_ORCHESTRATION, [(UUID(str(instance_id)), tenant_id, after_s) for instance_id in instance_ids]
            )
    except Exception:
        logger.exception(
            "orchestrations %s of tenant %s could not be recorded for their purge; if the tenant is gone, purge them",
            [str(instance_id) for instance_id in instance_ids],
            tenant_id,
        )
        return False
    return True


def forget_purged_orchestrations(tenant_id: UUID, instance_ids: Sequence[str]) -> None:
    """Drop the records of `instance_ids` of erased `tenant_id`, which the erasure has just purged itself (its row
    deletion recorded them, ADR 0046): the sweeper would only find them gone. A failure is logged; the sweeper then
    drops them so."""
    if not instance_ids:
        return
    try:
        with platform_transaction() as conn:
            conn.execute(_FORGET_PURGED, (tenant_id, [UUID(instance_id) for instance_id in instance_ids]))
    except Exception:
        logger.warning("records of purged orchestrations of erased tenant %s kept; the sweeper drops them", tenant_id)


@dataclass(frozen=True)
class _Due:
    """A recorded orchestration due for its purge, and the note it was read with."""

    instance_id: str
    tenant_id: UUID
    noted_at: Any


def _due_orchestrations(limit: int, control_pool: ConnectionPool[Any] | None) -> list[_Due]:
    """The records due, those of tenants still there dropped first."""
    with platform_transaction(pool=control_pool) as conn:
        conn.execute(_FORGET_LIVING)
        rows = conn.execute(_DUE_ORCHESTRATIONS, (limit,)).fetchall()
    return [_Due(str(row["instance_id"]), UUID(str(row["tenant_id"])), row["noted_at"]) for row in rows]


def _tenant_there(tenant_id: UUID, control_pool: ConnectionPool[Any] | None) -> bool:
    """Whether the tenant row is there (again: an id reused, as the devhost's demo tenants are)."""
    with platform_transaction(pool=control_pool) as conn:
        row = conn.execute(_TENANT_THERE, (tenant_id,)).fetchone()
    return bool(row and row["there"])


async def _purge_unless_there(
    due: _Due, client: Any, settle_s: float, control_pool: ConnectionPool[Any] | None
) -> int | None:
    """Terminate and purge a recorded orchestration, its tenant looked at right before: None, nothing touched, when
    the tenant is there (its orchestration is its own, however it came to be read as due)."""
    if await asyncio.to_thread(_tenant_there, due.tenant_id, control_pool):
        return None
    return await purge_orchestrations([due.instance_id], client, settle_s=settle_s)


def _settle_record(due: _Due, failure: str | None, control_pool: ConnectionPool[Any] | None) -> None:
    """Drop the record of an orchestration found gone (as read), or keep it with why its purge failed."""
    with platform_transaction(pool=control_pool) as conn:
        if failure is None:
            conn.execute(_DROP_ORCHESTRATION, (due.instance_id, due.noted_at))
        else:
            conn.execute(_TRIED_ORCHESTRATION, (failure[:2000], due.instance_id))


async def purge_erased_orchestrations(
    client: Any,
    *,
    settle_s: float,
    within_s: float,
    limit: int = MAX_ORCHESTRATIONS,
    control_pool: ConnectionPool[Any] | None = None,
) -> int:
    """Terminate and purge the recorded orchestrations that are due and whose tenant is gone (up to `limit`, all at
    once, `within_s` in all, each waited for `settle_s` to end after its terminate); answers how many were purged.
    The tenant is looked at in the statement that reads the due records and again right before each purge: a
    living tenant's orchestration is never touched (its record is dropped).

    A record is dropped once its purge finds the orchestration gone (purged now, or there was nothing), and kept with
    its failure otherwise (cut off by `within_s`, the task hub failing, a terminate not applied in time): the next
    run purges it again, until gone."""
    due = await asyncio.to_thread(_due_orchestrations, limit, control_pool)
    if not due:
        return 0
    tasks = [asyncio.ensure_future(_purge_unless_there(record, client, settle_s, control_pool)) for record in due]
    _, late = await asyncio.wait(tasks, timeout=within_s)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=1.0)
    purged = 0
    for record, task in zip(due, tasks, strict=True):
        failure = _purge_failure(task, within_s)
        if failure is None:
            # A tenant there (None): the record is dropped, as _FORGET_LIVING drops it.
            purged += task.result() or 0
        else:
            logger.warning(
                "orchestration %s of erased tenant %s was not purged (%s); purged again by a later run",
                record.instance_id,
                record.tenant_id,
                failure,
            )
        await asyncio.to_thread(_settle_record, record, failure, control_pool)
    if purged:
        logger.warning("%d orchestrations that outlived their erased tenant purged", purged)
    return purged


def _purge_failure(task: asyncio.Future[int | None], within_s: float) -> str | None:
    """Why a purge's task did not find its orchestration gone; None when it did."""
    if task.cancelled() or not task.done():
        return f"not purged within {within_s} s"
    exc = task.exception()
    return None if exc is None else f"{type(exc).__name__}: {exc}"
