# intent_ref: platform.access-control
"""A caller's action decided by Cedar (platform and tenant policies) and audited, for every way in (API, ingress)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg

from shared.audit import AuditRecord, AuditStore, get_audit_store
from shared.auth.principal import Principal
from shared.db.session import held_transaction, holding, tenant_transaction, when_released
from shared.policy.authorizer import Decision, Resource, get_authorizer
from shared.policy.tenant_policies import tenant_policy_texts
from shared.tenants.models import Tenant
from shared.tenants.repository import hold_tenant

logger = logging.getLogger(__name__)


class Caller(Protocol):
    """Who acts, for which tenant, in which request (an API request's context, an ingress event's sender)."""

    @property
    def principal(self) -> Principal: ...

    @property
    def tenant(self) -> Tenant: ...

    @property
    def request_id(self) -> str: ...


def decide(
    caller: Caller,
    action: str,
    resource: Resource,
    *,
    conn: Any | None = None,
    detail: dict[str, Any] | None = None,
) -> Decision:
    """Decide `action` on `resource` for the caller and audit the decision (allow and deny); refusing is the
    caller's edge's business.

    Called inside the caller's open tenant transaction (`conn`, or found by itself) it borrows no second connection:
    the allow record commits with the caller's transaction (and is written on its own if that rolls back), and a
    deny record is written on its own once the caller's transaction has ended, because the refusal rolls it back.
    """
    _off_the_event_loop(action)
    decision = get_authorizer().decide(
        caller.principal,
        action,
        resource,
        tenant=caller.tenant.facts(),
        tenant_policies=tenant_policy_texts(caller.tenant.id),
    )
    record_decision(caller, action, resource, decision, conn=conn, detail=detail, decided=True)
    return decision


def record_decision(
    caller: Caller,
    action: str,
    resource: Resource,
    decision: Decision,
    *,
    conn: Any | None = None,
    detail: dict[str, Any] | None = None,
    decided: bool = False,
) -> None:
    """Write the record without ever borrowing a second connection while this request holds one.

    `decided`: an authorization decision, which is recorded whatever becomes of the caller's transaction; else a
    mutation, which commits or rolls back with it.
    """
    _off_the_event_loop(action)
    record = AuditRecord.new(
        tenant_id=caller.tenant.id,
        principal_id=caller.principal.id,
        action=action,
        resource_type=resource.type,
        resource_id=resource.id,
        decision="allow" if decision.allowed else "deny",
        reason=decision.reason,
        request_id=caller.request_id,
        detail=detail or {},
        occurred_at=datetime.now(UTC),
    )
    store = get_audit_store()
    if decision.allowed:
        joined = conn if conn is not None else held_transaction(caller.tenant.id)
        if joined is not None:
            store.record(record, conn=joined)
            if decided:
                when_released(joined, lambda: _record_unless_erased(store, record), only="rollback")
            return
    held = holding()
    if held is None or not when_released(held, lambda: _record_unless_erased(store, record)):
        _record_unless_erased(store, record)


def _record_unless_erased(store: AuditStore, record: AuditRecord) -> None:
    """Write `record` on its own once the caller's transaction has ended; dropped when its tenant is gone by then.

    The database takes no record of a tenant whose row is gone (migration 0041): erased while the request waited on
    its row, the tenant keeps only its erasure's record (ADR 0012), and the request is answered as an unknown
    tenant's. A refusal while the tenant is still there is raised, as any failure to record a decision is."""
    try:
        store.record(record)
    except psycopg.errors.InsufficientPrivilege:
        with tenant_transaction(record.tenant_id) as conn:
            if hold_tenant(conn, record.tenant_id):
                raise
        logger.info(
            "decision record of erased tenant %s dropped: %s %s", record.tenant_id, record.decision, record.action
        )


def _off_the_event_loop(action: str) -> None:
    """Refuse to run on an event loop: a decision reads policies and writes its record through pooled connections,
    and waiting for one there would stall every request the loop serves (ADR 0039)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"the decision on {action} does database I/O: call it off the event loop (run_in_threadpool)")
