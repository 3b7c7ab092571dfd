# intent_ref: platform.audit
"""The audit outbox (migration 0027): a store that cannot join the caller's transaction gets its records from it.

A record of a tenant transaction is queued in `app.audit_outbox` inside that transaction, so it exists exactly when
the change does. Once the transaction has committed and its connection is back in the pool, what it queued is
copied to the store and removed from the outbox; what is left (the store was down, the process died in between) is
copied by `relay`, which the timer `audit_outbox_relay` runs. A copy can happen twice (the timer and a late copy
after a commit): the store takes a record by its id once, so the second changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction, tenant_transaction, tenant_write, transaction_bag, when_released

logger = logging.getLogger(__name__)

_QUEUE = "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)"
_WAITING = "SELECT id, document FROM app.audit_outbox ORDER BY queued_at, id LIMIT %s"  # the pinned tenant's (RLS)
_COPIED = "DELETE FROM app.audit_outbox WHERE id = ANY(%s)"
_WAITING_TENANTS = "SELECT tenant_id FROM app.audit_outbox_tenants(%s) AS waiting (tenant_id)"
_BAG = "audit-outbox"

BATCH = 100
"""Records one relay pass copies per tenant and transaction."""
MAX_TENANTS = 100
"""Tenants one relay run serves (those waiting longest); the next run takes the rest."""
MAX_BATCHES = 20
"""Batches one relay run copies per tenant, so that one tenant's backlog cannot hold up the others."""
COOLDOWN_S = 30.0
"""After a failed copy, copies after a commit are left to the relay this long: a store that is down must not slow
every request that records something by its timeouts."""

Write = Callable[[UUID, dict[str, Any]], None]
"""Writes one document to the store; a document the store already holds (same id) is no error."""


@dataclass(frozen=True)
class RelayResult:
    """What one relay run copied."""

    copied: int
    tenants: int
    failed_tenants: int


class AuditOutbox:
    """Queues a transaction's records and copies them to the store with `write` once they are committed."""

    def __init__(
        self,
        write: Write,
        *,
        pool: ConnectionPool[Any] | None = None,
        control_pool: ConnectionPool[Any] | None = None,
        cooldown_s: float = COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._pool = pool
        self._control_pool = control_pool
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._resting_until = 0.0

    def queue(self, conn: psycopg.Connection[Any], tenant_id: UUID, record_id: UUID, document: dict[str, Any]) -> None:
        """Queue `document` inside `conn`'s open transaction of `tenant_id` (RLS refuses another tenant's)."""
        conn.execute(_QUEUE, (tenant_id, record_id, Jsonb(document)))
        queued = transaction_bag(conn, _BAG)
        if queued is None:
            return  # a transaction this context does not hold: the relay copies it
        if not queued:
            when_released(conn, lambda: self._copy_committed(tenant_id, queued), only="commit")
        queued.append((record_id, document))

    def relay(self, *, max_tenants: int = MAX_TENANTS) -> RelayResult:
        """Copy what waits in the outbox, tenant by tenant, oldest first; a tenant whose copy fails is logged and
        left for the next run, and the other tenants still go."""
        with platform_transaction(pool=self._control_pool) as conn:
            tenants = [UUID(str(row["tenant_id"])) for row in conn.execute(_WAITING_TENANTS, (max_tenants,))]
        copied = failed = 0
        for tenant_id in tenants:
            try:
                copied += self.relay_tenant(tenant_id)
            except Exception as exc:  # the store or the database: the records wait for the next run
                logger.warning("audit outbox: the records of tenant %s could not be copied yet: %s", tenant_id, exc)
                failed += 1
        if failed == 0 and copied:
            self._rested()
        return RelayResult(copied, len(tenants), failed)

    def relay_tenant(self, tenant_id: UUID, *, max_batches: int = MAX_BATCHES) -> int:
        """Copy up to `max_batches` batches of `tenant_id`'s waiting records; returns how many were copied, and
        raises the first failure after removing what was copied before it."""
        copied = 0
        for _ in range(max_batches):
            with tenant_transaction(tenant_id, pool=self._pool) as conn:
                rows = conn.execute(_WAITING, (BATCH,)).fetchall()
            copied += self._copy(tenant_id, [(row["id"], row["document"]) for row in rows])
            if len(rows) < BATCH:
                break
        return copied

    def _copy(self, tenant_id: UUID, records: Sequence[tuple[UUID, dict[str, Any]]]) -> int:
        """Write each record to the store, then remove the written ones from the outbox (one round trip); a failure
        is raised once what was written before it is removed."""
        written: list[UUID] = []
        failure: Exception | None = None
        for record_id, document in records:
            try:
                self._write(tenant_id, document)
            except Exception as exc:
                failure = exc
                break
            written.append(record_id)
        if written:
            with tenant_write(tenant_id, pool=self._pool) as conn:
                conn.execute(_COPIED, (written,))
        if failure is not None:
            raise failure
        return len(written)

    def _copy_committed(self, tenant_id: UUID, queued: list[tuple[UUID, dict[str, Any]]]) -> None:
        """After a commit: copy what that transaction queued. Never raises: the change is committed, and what is
        not copied now the relay copies."""
        if self._clock() < self._resting_until:
            return
        try:
            self._copy(tenant_id, queued)
        except Exception as exc:
            logger.warning("audit outbox: %d records of tenant %s left to the relay: %s", len(queued), tenant_id, exc)
            with self._lock:
                self._resting_until = self._clock() + self._cooldown_s

    def _rested(self) -> None:
        with self._lock:
            self._resting_until = 0.0
