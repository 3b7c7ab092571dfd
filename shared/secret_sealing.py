# intent_ref: platform.hardening
"""Sealing the secrets the database still keeps otherwise: in plain text from before sealing, or sealed with the key
before a rotation (ADR 0040). Each tenant's in its own transaction; the timer `secret_sealing` runs this."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from shared.db.session import bounded_lock_waits, platform_transaction, tenant_transaction
from shared.db.tenant_passes import each_tenant
from shared.engine import task_tokens
from shared.events import webhook_store
from shared.sealing import Sealer, SealError, sealer

logger = logging.getLogger(__name__)

# It takes the current key's whole prefix and no other (migration 0039), and names the tenants in random order
# (migration 0042): in id order, tenants whose values never open came first on every run and kept the others out.
_TENANTS = "SELECT tenant_id FROM app.tenants_with_secrets_to_seal(%s, %s) AS found (tenant_id)"
MAX_TENANTS = 100
"""Tenants one run seals; the next run takes others (the finder names them in random order)."""


@dataclass(frozen=True)
class SealingResult:
    """What one run sealed, and how many values it left because they did not open."""

    webhook_secrets: int
    task_token_keys: int
    tenants: int
    failed_tenants: int
    unopened: int = 0
    """Values that do not open with this process's keys (sealed under a key it lacks): logged and left as they are,
    while the tenant's other values are sealed."""


@dataclass
class _Tally:
    """One tenant's pass: values sealed of each kind, and values left because they did not open."""

    webhook_secrets: int = 0
    task_token_keys: int = 0
    unopened: int = 0


def seal_stored_secrets(
    *,
    max_tenants: int = MAX_TENANTS,
    keys: Sealer | None = None,
    pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> SealingResult:
    """Seal with the current key every secret of up to `max_tenants` tenants that is not yet. A value that does not
    open (sealed under a key this process lacks, say) is logged and left as it is, and the tenant's others are sealed;
    a tenant whose pass fails otherwise (a row locked past bounded_lock_waits' bound included) is logged and left
    for the next run, and the other tenants go."""
    keys = keys or sealer()
    with platform_transaction(pool=control_pool) as conn:
        found = conn.execute(_TENANTS, (keys.current_prefix, max_tenants)).fetchall()

    def seal(tenant_id: UUID) -> _Tally:
        with tenant_transaction(tenant_id, pool=pool) as conn:
            return _seal_tenant(conn, tenant_id, keys)

    # Tenants go one after another, and `_TO_SEAL` locks their subscriptions: one row held elsewhere (the relay's
    # fan-out, a change) held the run up to the statement timeout, and meanwhile its locks held up that tenant's sends.
    with bounded_lock_waits():
        sealed = each_tenant((UUID(str(row["tenant_id"])) for row in found), seal, what="secret sealing")
    return SealingResult(
        sum(t.webhook_secrets for t in sealed.results),
        sum(t.task_token_keys for t in sealed.results),
        len(found),
        sealed.failed_count,
        sum(t.unopened for t in sealed.results),
    )


def _seal_tenant(conn: psycopg.Connection[Any], tenant_id: UUID, keys: Sealer) -> _Tally:
    """Seal the tenant's values inside its open transaction, each in a savepoint of its own: one that did not open
    rolled back the whole tenant's pass, and its other values stayed unsealed on every run."""
    tally = _Tally()
    for subscription_id, stored in webhook_store.secrets_to_seal(conn, keys.current_prefix):
        with _unless_unopened(conn, tally, f"webhook subscription {subscription_id} of tenant {tenant_id}"):
            owner = webhook_store.sealed_for(tenant_id, subscription_id)
            secret = webhook_store.open_secret(stored, owner, keys).encode("ascii")
            webhook_store.store_sealed(conn, subscription_id, keys.seal(secret, owner))
            tally.webhook_secrets += 1
    with _unless_unopened(conn, tally, f"task-token key of tenant {tenant_id}"):
        tally.task_token_keys += task_tokens.seal_key(conn, tenant_id, keys)
    return tally


@contextmanager
def _unless_unopened(conn: psycopg.Connection[Any], tally: _Tally, what: str) -> Iterator[None]:
    """The block in a savepoint; when its value does not open (SealError), the savepoint rolled back, the value
    logged and counted in `tally`, and the pass goes on. Any other failure fails the tenant's pass, as before."""
    try:
        with conn.transaction():
            yield
    except SealError as exc:
        # Left as it is: only the key it was sealed under opens it, and sealing it again needs that key.
        logger.error(
            "secret sealing: the %s does not open and is left as it is; check QP_SEALING_KEY and"
            " QP_SEALING_KEY_PREVIOUS: %s",
            what,
            exc,
        )
        tally.unopened += 1
