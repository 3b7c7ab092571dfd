# intent_ref: platform.tenants
"""Emptying an erased tenant's blob prefix of what its erasure and its writers could not remove (ADR 0046).

An erasure records the tenant in `control.erased_tenant_blobs` (migration 0053) in the transaction that deletes its
row, and a writer whose removal of a blob fails records it again (`offboarding.kept_for_tenant`). The timer
`erased_tenant_blobs` runs `sweep_erased_tenant_blobs`: each recorded tenant's prefix is emptied, and its record is
dropped once a sweep finds the prefix empty at least `KEEP` after the last note, so a writer that wrote after the
erasure and died before it could look at its tenant leaves no blob for good either.

Each sweep also removes from the audit store the tenant's records but its erasure's own (`erase_outlived`): an outbox
copy that wrote a record as the tenant was erased and died before it could look at its tenant and undo the write left
it there, with nothing else to tell a later run about it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from azure.storage.blob import ContainerClient
from psycopg_pool import ConnectionPool

from shared.audit import AuditStore, get_audit_store
from shared.config import get_settings
from shared.db.session import platform_transaction
from shared.storage.blob import artifacts_container
from shared.tenants.offboarding import (
    TENANT_LISTING,
    delete_tenant_blobs,
    tenant_blob_prefix,
)

logger = logging.getLogger(__name__)

KEEP = timedelta(days=7)
"""How long after its last note a record is kept although its prefix is empty: every writer runs in a function
invocation, which the host ends after an hour (`functionTimeout`), so a blob whose writer died before it could look at
its tenant (or that storage completed after its client gave up) lands well within it."""
MAX_TENANTS = 20
"""Erased tenants one run sweeps (the longest unswept first); the next run takes the rest."""
MAX_BLOBS = 1000
"""Blobs one run deletes of one tenant: a big prefix takes a few runs, not one long one."""

# A tenant row of the same id again (the devhost seeds its demo tenants under fixed ids): its blobs are that
# tenant's now, so the record of the erased one goes, before any sweep could take them.
_FORGET_REUSED = (
    "DELETE FROM control.erased_tenant_blobs r WHERE EXISTS (SELECT 1 FROM app.tenants t WHERE t.id = r.tenant_id)"
)
_FORGET_IF_REUSED = (
    "DELETE FROM control.erased_tenant_blobs WHERE tenant_id = %s AND EXISTS (SELECT 1 FROM app.tenants WHERE id = %s)"
)
_DUE = "SELECT tenant_id, noted_at FROM control.erased_tenant_blobs ORDER BY swept_at NULLS FIRST, erased_at LIMIT %s"
# Dropped only as read: a note since (a writer's removal failed after this sweep looked) keeps it.
_DROP = (
    "DELETE FROM control.erased_tenant_blobs WHERE tenant_id = %s AND noted_at = %s AND noted_at < now() - %s"
    " AND NOT EXISTS (SELECT 1 FROM app.tenants t WHERE t.id = %s)"
)
_SWEPT = "UPDATE control.erased_tenant_blobs SET swept_at = now(), failure = %s WHERE tenant_id = %s"


@dataclass(frozen=True)
class SweepResult:
    """What one run did."""

    tenants: int
    """Erased tenants swept."""
    blobs: int
    """Blobs deleted."""
    dropped: int
    """Records dropped: their prefix was empty and their time was up."""
    failed: int
    """Tenants whose sweep failed (storage unavailable): kept for the next run."""
    records: int = 0
    """Audit records deleted (`erase_outlived`)."""


def sweep_erased_tenant_blobs(
    container: ContainerClient | None = None,
    *,
    keep: timedelta = KEEP,
    max_tenants: int = MAX_TENANTS,
    max_blobs: int = MAX_BLOBS,
    control_pool: ConnectionPool[Any] | None = None,
    audit_store: AuditStore | None = None,
) -> SweepResult:
    """Delete what is left under each recorded erased tenant's prefix (up to `max_tenants` tenants, `max_blobs` blobs
    each), and drop the record of a tenant whose prefix is then empty and was last noted over `keep` ago.

    `container` is the artifacts container (by default the background one, asked for only when there is a tenant to
    sweep), `audit_store` the configured store, whose records of the tenant but its erasure's own are deleted too: a
    record is kept while that fails. No connection is held while storage is called. The first failure ends the run:
    blob storage is most likely away for every tenant, and the sweep order puts the failed tenant last next time.
    """
    with platform_transaction(pool=control_pool) as conn:
        conn.execute(_FORGET_REUSED)
        due = [(UUID(str(row["tenant_id"])), row["noted_at"]) for row in conn.execute(_DUE, (max_tenants,))]
    if not due:
        return SweepResult(0, 0, 0, 0)
    blobs = container if container is not None else artifacts_container(get_settings())
    audit = audit_store if audit_store is not None else get_audit_store()
    swept = deleted = dropped = records = 0
    for tenant_id, noted_at in due:
        # Asked again right before its sweep, not only when the run began: a run may take minutes.
        with platform_transaction(pool=control_pool) as conn:
            if conn.execute(_FORGET_IF_REUSED, (tenant_id, tenant_id)).rowcount:
                continue
        try:
            count, empty = _sweep(tenant_id, blobs, max_blobs)
        except Exception as exc:
            logger.warning(
                "erased tenant blobs: the prefix of tenant %s could not be swept, left for the next run (%s: %s)",
                tenant_id,
                type(exc).__name__,
                exc,
            )
            with platform_transaction(pool=control_pool) as conn:
                conn.execute(_SWEPT, (f"{type(exc).__name__}: {exc}"[:2000], tenant_id))
            return SweepResult(swept, deleted, dropped, 1, records)
        erased, failure = _erase_records(tenant_id, audit)
        records += erased
        swept += 1
        deleted += count
        if count:
            logger.warning("erased tenant blobs: %d blobs of erased tenant %s removed", count, tenant_id)
        with platform_transaction(pool=control_pool) as conn:
            if failure is None and empty and conn.execute(_DROP, (tenant_id, noted_at, keep, tenant_id)).rowcount:
                dropped += 1
            else:
                conn.execute(_SWEPT, (failure, tenant_id))
    return SweepResult(swept, deleted, dropped, 0, records)


def _erase_records(tenant_id: UUID, audit_store: AuditStore) -> tuple[int, str | None]:
    """Delete the erased tenant's audit records but its erasure's own; returns how many, and why it failed if it did
    (its record is then kept for the next run; the blobs still go)."""
    try:
        erased = audit_store.erase_outlived(tenant_id)
    except Exception as exc:
        logger.warning(
            "erased tenant blobs: the audit records of tenant %s could not be removed, left for the next run (%s: %s)",
            tenant_id,
            type(exc).__name__,
            exc,
        )
        return 0, f"{type(exc).__name__}: {exc}"[:2000]
    if erased:
        logger.warning("erased tenant blobs: %d audit records of erased tenant %s removed", erased, tenant_id)
    return erased, None


def _sweep(tenant_id: UUID, container: ContainerClient, max_blobs: int) -> tuple[int, bool]:
    """Delete up to `max_blobs` of the tenant's blobs; returns how many, and whether the prefix was empty then."""
    deleted = delete_tenant_blobs(tenant_id, container, limit=max_blobs)
    # Looked at once more: the pass may have stopped at its limit, or a writer may have written while it listed.
    # Blobs with staged blocks only included: a copy cut short leaves one, which a plain listing does not show.
    left = container.list_blobs(
        name_starts_with=tenant_blob_prefix(tenant_id), include=TENANT_LISTING, results_per_page=1
    )
    return deleted, next(iter(left), None) is None
