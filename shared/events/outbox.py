# intent_ref: platform.events
"""The transactional outbox: domain events recorded in the same transaction as the change they describe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from shared.observability.tracing import current_traceparent

_INSERT = (
    "INSERT INTO app.outbox (tenant_id, event_type, subject, data, traceparent)"
    " VALUES (app.current_tenant_id(), %s, %s, %s, %s)"
    " RETURNING id, tenant_id"
)


@dataclass(frozen=True)
class Enqueued:
    """Where an event went: its id (the event id consumers dedupe by) and its tenant."""

    id: UUID
    tenant_id: UUID


def enqueue_event(conn: psycopg.Connection[DictRow], event_type: str, subject: str, data: dict[str, Any]) -> Enqueued:
    """Add an event for the current tenant to the outbox (published later, at least once), with the current trace
    context, which travels with it."""
    row = conn.execute(_INSERT, (event_type, subject, Jsonb(data), current_traceparent())).fetchone()
    assert row is not None  # INSERT ... RETURNING
    return Enqueued(UUID(str(row["id"])), UUID(str(row["tenant_id"])))


def enqueue(conn: psycopg.Connection[DictRow], event_type: str, subject: str, data: dict[str, Any]) -> UUID:
    """Add an event for the current tenant to the outbox (published later, at least once); returns its id."""
    return enqueue_event(conn, event_type, subject, data).id
