# intent_ref: platform.events
"""The transactional outbox: domain events recorded in the same transaction as the change they describe."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb


def enqueue(conn: psycopg.Connection[DictRow], event_type: str, subject: str, data: dict[str, Any]) -> UUID:
    """Add an event for the current tenant to the outbox (published later, at least once); returns its id."""
    row = conn.execute(
        "INSERT INTO app.outbox (tenant_id, event_type, subject, data) VALUES (app.current_tenant_id(), %s, %s, %s)"
        " RETURNING id", (event_type, subject, Jsonb(data)),
    ).fetchone()
    assert row is not None  # noqa: S101  # INSERT ... RETURNING
    return UUID(str(row["id"]))
