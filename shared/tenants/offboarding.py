# intent_ref: platform.tenants
"""Tenant offboarding: export everything a tenant has as one JSON archive, then erase every trace of it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from azure.storage.blob import ContainerClient
from psycopg import sql

from shared.audit import AuditStore
from shared.db.session import platform_transaction, tenant_transaction
from shared.tenants.models import Tenant

# Every app table that holds tenant rows, children before parents (erasure order). A test fails when a new
# tenant table is missing here, so erasure cannot silently leave one behind.
TENANT_TABLES = ("idempotency_keys", "outbox", "execution_events", "step_attempts", "execution_steps",
                 "task_token_keys", "executions", "intent_versions", "intents",
                 "tenant_policies", "rate_buckets", "modules", "audit_events")
# What the export archive carries (the rate bucket is a counter, not the tenant's data).
EXPORTED_TABLES = ("intents", "intent_versions", "executions", "execution_steps", "step_attempts",
                   "execution_events", "tenant_policies", "modules",
                   "audit_events")


@dataclass(frozen=True)
class ExportResult:
    """Where the archive was written and how many rows of each kind it holds."""

    blob_name: str
    counts: dict[str, int]


def tenant_blob_prefix(tenant_id: UUID) -> str:
    """Every blob of a tenant is named under this prefix."""
    return f"{tenant_id}/"


def export_tenant(tenant: Tenant, container: ContainerClient) -> ExportResult:
    """Write the tenant's rows (read under its own RLS context) to `<tenant>/exports/<time>.json`."""
    archive: dict[str, Any] = {"tenant": tenant.model_dump(mode="json"),
                               "exported_at": datetime.now(UTC).isoformat()}
    with tenant_transaction(tenant.id) as conn:
        for table in EXPORTED_TABLES:
            rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier("app", table))).fetchall()
            archive[table] = rows
    blob_name = f"{tenant_blob_prefix(tenant.id)}exports/{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.json"
    body = json.dumps(archive, default=str, sort_keys=True).encode()
    container.upload_blob(blob_name, body, overwrite=False, content_type="application/json")
    return ExportResult(blob_name, {table: len(archive[table]) for table in EXPORTED_TABLES})


def erase_tenant(tenant_id: UUID, container: ContainerClient, audit_store: AuditStore) -> dict[str, int]:
    """Delete the tenant's blobs, every row of it, its audit trail and its tenant row; returns counts per kind.

    Runs as the control plane inside the erased tenant's context: its DELETE policies reach that tenant only.
    Safe to run again after a partial failure.
    """
    removed: dict[str, int] = {"blobs": 0}
    for blob in container.list_blobs(name_starts_with=tenant_blob_prefix(tenant_id)):
        container.delete_blob(blob.name)
        removed["blobs"] += 1
    with platform_transaction() as conn:
        conn.execute("SELECT app.pin_tenant(%s)", (tenant_id,))
        for table in TENANT_TABLES:
            cursor = conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier("app", table)))
            removed[table] = cursor.rowcount
        removed["tenants"] = conn.execute("DELETE FROM app.tenants WHERE id = %s", (tenant_id,)).rowcount
    # The configured audit backend may live outside Postgres (Cosmos DB): erase it there too.
    removed["audit_records"] = audit_store.erase(tenant_id)
    return removed
