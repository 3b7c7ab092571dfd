# intent_ref: platform.idempotency
"""Deleting expired idempotency keys: the tenants' own, each in its tenant's transaction, and the control plane's.

A key is forgotten when it is used again after it expired (`shared.idempotency.claim`), but most keys are never
used again, and a stored answer can hold what must not outlive its key (a webhook subscription's signing secret,
ADR 0022). The timer `idempotency_key_expiry` runs this; nothing else depends on when it runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

from shared.db.session import bounded_lock_waits, platform_transaction, tenant_transaction
from shared.db.tenant_passes import each_tenant

_EXPIRED_KEY_TENANTS = "SELECT tenant_id FROM app.idempotency_expired_tenants(%s) AS expired (tenant_id)"
# The pinned tenant's, at most %s of them, through its function (migration 0046: the runtime has no DELETE on the
# table, which would let a tenant's transaction LOCK it against every tenant); a key a request's transaction holds (a
# client re-sending it) is skipped, not waited for: that request forgets it anyway, or a later run deletes it.
_DELETE_TENANT_KEYS = "SELECT app.delete_expired_idempotency_keys(%s) AS removed"
_DELETE_CONTROL_KEYS = "DELETE FROM control.idempotency_keys WHERE expires_at < now()"
MAX_TENANTS = 100
"""Tenants one run purges (those whose keys expired first); the next run takes the rest."""
MAX_KEYS_PER_TENANT = 1000
"""Keys one transaction deletes of one tenant (the oldest first): a tenant with a backlog goes in several short
transactions, each holding its rows only as long as a thousand deletes take."""
RUN_BUDGET_S = 60.0
"""How long a run goes on deleting a tenant's backlog past its first batch. One batch per tenant per run (every five
minutes) deleted 200 keys a minute, less than a tenant's request rate lets it create (600 a minute), so a tenant's
expired keys, and the sealed secrets in their answers, piled up for days; every tenant still gets its first batch
however long the others' backlogs take."""


@dataclass(frozen=True)
class ExpiryResult:
    """What one run deleted."""

    tenant_keys: int
    control_keys: int
    tenants: int
    failed_tenants: int


def delete_expired_keys(
    *,
    max_tenants: int = MAX_TENANTS,
    pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> ExpiryResult:
    """Delete every expired key of up to `max_tenants` tenants and of the control plane; `pool` serves the tenant
    transactions, `control_pool` the control plane's (the process-wide pools when None). A tenant whose keys cannot
    be deleted (or whose wait for a lock passes bounded_lock_waits' bound) is logged and left for the next run; the
    other tenants still go. A tenant's full batch is followed by more while the run is within RUN_BUDGET_S."""
    deadline = time.monotonic() + RUN_BUDGET_S
    with platform_transaction(pool=control_pool) as conn:
        tenants = [UUID(str(row["tenant_id"])) for row in conn.execute(_EXPIRED_KEY_TENANTS, (max_tenants,))]
        control_keys = conn.execute(_DELETE_CONTROL_KEYS).rowcount

    def delete(tenant_id: UUID) -> int:
        removed = 0
        while True:
            with tenant_transaction(tenant_id, pool=pool) as conn:
                row = conn.execute(_DELETE_TENANT_KEYS, (MAX_KEYS_PER_TENANT,)).fetchone()
                batch = int(row["removed"]) if row is not None else 0
            removed += batch
            if batch < MAX_KEYS_PER_TENANT or time.monotonic() >= deadline:
                return removed

    with bounded_lock_waits():  # tenants go one after another: one's lock must not hold up the others
        deleted = each_tenant(tenants, delete, what="idempotency key expiry")
    return ExpiryResult(sum(deleted.results), control_keys, len(tenants), deleted.failed_count)
