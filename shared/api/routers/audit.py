# intent_ref: platform.audit
"""The tenant's audit trail: Tenant.Admin reads it, filtered and cursor-paginated."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import invalid_fields
from shared.api.responses import AUTH_ERRORS, BAD_CURSOR, INVALID
from shared.api.security import RequestContext, authorize, tenant_resource
from shared.audit import AuditQuery, get_audit_store
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from shared.policy.actions import Action

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], route_class=GuardedRoute)


@router.get("", summary="Read the tenant's audit trail", responses={**AUTH_ERRORS, 400: BAD_CURSOR, 422: INVALID})
def list_records(
    context: Annotated[RequestContext, Depends(permission(Action.AUDIT_READ))],
    action: str | None = Query(None, max_length=100),
    decision: Literal["allow", "deny"] | None = None,
    principal_id: str | None = Query(None, max_length=200),
    resource_type: str | None = Query(None, max_length=50),
    resource_id: str | None = Query(None, max_length=200),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> dict[str, Any]:
    """Audit records of the caller's tenant, newest first (Tenant.Admin)."""
    authorize(context, Action.AUDIT_READ, tenant_resource("AuditLog", "*", context.tenant.id))
    naive = [name for name, value in (("since", since), ("until", until)) if value is not None and value.tzinfo is None]
    if naive:
        raise invalid_fields(
            *((f"/query/{name}", "add an offset, e.g. Z") for name in naive), detail="Times need a UTC offset."
        )
    page = get_audit_store().query(
        AuditQuery(
            tenant_id=context.tenant.id,
            action=action,
            decision=decision,
            principal_id=principal_id,
            resource_type=resource_type,
            resource_id=resource_id,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
    )
    return {"items": [item.to_public() for item in page.items], "next_cursor": page.next_cursor}
