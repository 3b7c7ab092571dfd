# intent_ref: platform.audit
"""Choose the process's audit store from settings: Postgres (default) or Cosmos DB."""

from __future__ import annotations

import threading
import time
import uuid
from functools import lru_cache

from shared.audit.model import AuditStore
from shared.config import Settings, get_settings

AUDIT_RETENTION_SETTING = "audit_retention_days"
AUDIT_MIN_RETENTION_DAYS = 90
"""The platform's floor on a tenant's audit retention (ADR 0012, amended 2026-12-07): a trail its own admin could
shorten to a day is no evidence of what happened in it. A write below it is refused; a value stored before the floor
existed is raised to it when a record's time to live is computed."""
AUDIT_MAX_RETENTION_DAYS = (2**31 - 1) // 86_400
"""The longest retention a tenant may set: the whole days Cosmos DB's per-item time to live can hold (2^31 - 1 s,
24855 days, about 68 years)."""

# A tenant's retention changes rarely; re-reading it for every audit record would double the writes' cost.
_RETENTION_CACHE_S = 300.0
_SELECT_RETENTION = "SELECT settings -> %s AS days FROM app.tenants WHERE id = %s"


class _TenantRetention:
    """Per-tenant audit retention in days, read from the tenant's settings and cached briefly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[uuid.UUID, tuple[float, int | None]] = {}

    def __call__(self, tenant_id: uuid.UUID) -> int | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(tenant_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        days = _read_retention_days(tenant_id)
        with self._lock:
            self._cache[tenant_id] = (now + _RETENTION_CACHE_S, days)
        return days


def _read_retention_days(tenant_id: uuid.UUID) -> int | None:
    from shared.db.session import held_transaction, tenant_transaction

    # A record written inside the caller's open transaction of this tenant reads there: a second borrow while one
    # is held is how concurrent requests stall each other.
    joined = held_transaction(tenant_id)
    if joined is not None:
        row = joined.execute(_SELECT_RETENTION, (AUDIT_RETENTION_SETTING, tenant_id)).fetchone()
    else:
        with tenant_transaction(tenant_id) as conn:
            row = conn.execute(_SELECT_RETENTION, (AUDIT_RETENTION_SETTING, tenant_id)).fetchone()
    days = row["days"] if row else None
    # Anything but a positive whole number means "no retention set": keep the records. A number below the floor (stored
    # before there was one) is returned as it is; the store raises it to `AUDIT_MIN_RETENTION_DAYS`.
    return days if isinstance(days, int) and not isinstance(days, bool) and days > 0 else None


def build_audit_store(settings: Settings) -> AuditStore:
    """A new store for `settings` (imports only the chosen backend's SDK)."""
    if settings.QP_AUDIT_BACKEND == "cosmos":
        from azure.cosmos import CosmosClient
        from azure.identity import DefaultAzureCredential

        from shared.audit.cosmos import CosmosAuditStore, inline_connection_policy

        if not settings.QP_COSMOS_ENDPOINT:
            raise ValueError("QP_COSMOS_ENDPOINT is required when QP_AUDIT_BACKEND=cosmos")
        # Entra identity only: the account's keys stay disabled. The container is created by the IaC,
        # because data-plane RBAC cannot create containers.
        credential = DefaultAzureCredential()
        client = CosmosClient(settings.QP_COSMOS_ENDPOINT, credential=credential)
        # The copies after a commit go through a client of their own that retries no throttled write: the SDK sleeps
        # a throttled write's whole retry-after, past any per-call timeout (ADR 0012, amended 2026-12-07).
        inline_client = CosmosClient(
            settings.QP_COSMOS_ENDPOINT, credential=credential, connection_policy=inline_connection_policy()
        )
        database, name = settings.QP_COSMOS_DATABASE, settings.QP_COSMOS_AUDIT_CONTAINER
        return CosmosAuditStore(
            client.get_database_client(database).get_container_client(name),
            retention_days=_TenantRetention(),
            inline_container=inline_client.get_database_client(database).get_container_client(name),
        )

    from shared.audit.postgres import PostgresAuditStore

    return PostgresAuditStore()


@lru_cache(maxsize=1)
def get_audit_store() -> AuditStore:
    """The process-wide audit store, built once from the settings."""
    return build_audit_store(get_settings())
