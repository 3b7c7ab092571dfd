# intent_ref: platform.hardening
"""Sealing the secrets the database still keeps otherwise: in plain text from before sealing, or sealed with the key
before a rotation (ADR 0040). Each tenant's in its own transaction; the timer `secret_sealing` runs this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction, tenant_transaction
from shared.db.tenant_passes import each_tenant
from shared.engine import task_tokens
from shared.events import webhook_store
from shared.sealing import Sealer, sealer

# It takes the current key's whole prefix and no other (migration 0039): a partial one let the control plane read a
# stored secret through it, one character at a time.
_TENANTS = "SELECT tenant_id FROM app.tenants_with_secrets_to_seal(%s, %s) AS found (tenant_id)"
MAX_TENANTS = 100
"""Tenants one run seals; the next run takes the rest."""


@dataclass(frozen=True)
class SealingResult:
    """What one run sealed."""

    webhook_secrets: int
    task_token_keys: int
    tenants: int
    failed_tenants: int


def seal_stored_secrets(
    *,
    max_tenants: int = MAX_TENANTS,
    keys: Sealer | None = None,
    pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> SealingResult:
    """Seal with the current key every secret of up to `max_tenants` tenants that is not yet. A tenant whose secrets
    cannot be sealed (one sealed with a key this process lacks, say) is logged and left as it is; the others go."""
    keys = keys or sealer()
    with platform_transaction(pool=control_pool) as conn:
        found = conn.execute(_TENANTS, (keys.current_prefix, max_tenants)).fetchall()

    def seal(tenant_id: UUID) -> tuple[int, int]:
        with tenant_transaction(tenant_id, pool=pool) as conn:
            return webhook_store.seal_secrets(conn, tenant_id, keys), task_tokens.seal_key(conn, tenant_id, keys)

    sealed, failed = each_tenant((UUID(str(row["tenant_id"])) for row in found), seal, what="secret sealing")
    return SealingResult(sum(s[0] for s in sealed), sum(s[1] for s in sealed), len(found), failed)
