# intent_ref: platform.tenant-isolation
"""Per-tenant locks: a row of `app.tenant_locks` per tenant and purpose, which only that tenant's transactions can
see, and so take (migration 0030); a lock ends with the transaction that took it."""

from __future__ import annotations

from typing import Any, Literal

import psycopg

Purpose = Literal[
    "executions",
    "outbox-relay",
    "webhook-subscriptions",
    "tenant-policies",
    "tenant-modules",
    "intent-runs",
    "ingress-rejections",
]
"""What a lock serialises: a tenant's starts (their quota check and insert), its outbox relay, its creates of
webhook subscriptions, policies or modules (their quota check and insert), its saves of intents that run
intents (their cycle check and write, migration 0051), or its records of rejected ingress events (their insert and
trim, migration 0082; taken after `executions` when a transaction holds both, never before)."""

_HOLD = (
    "INSERT INTO app.tenant_locks (tenant_id, purpose) VALUES ((SELECT app.current_tenant_id()), %s)"
    " ON CONFLICT (tenant_id, purpose) DO UPDATE SET purpose = EXCLUDED.purpose"
)
# Made first when missing, in a statement of its own so that the lock's statement sees the row.
_ENSURE = (
    "INSERT INTO app.tenant_locks (tenant_id, purpose) VALUES ((SELECT app.current_tenant_id()), %s)"
    " ON CONFLICT (tenant_id, purpose) DO NOTHING"
)
_TRY = "SELECT 1 FROM app.tenant_locks WHERE purpose = %s FOR UPDATE SKIP LOCKED"


def hold(conn: psycopg.Connection[Any], purpose: Purpose) -> None:
    """Take the current tenant's `purpose` lock until the transaction ends, waiting for a holder (one statement: the
    upsert locks the row, making it the first time)."""
    conn.execute(_HOLD, (purpose,))


def try_hold(conn: psycopg.Connection[Any], purpose: Purpose) -> bool:
    """Take the current tenant's `purpose` lock until the transaction ends, if no other transaction holds it; never
    waits, except once for a concurrent first insert of the row."""
    conn.execute(_ENSURE, (purpose,))
    return conn.execute(_TRY, (purpose,)).fetchone() is not None
