# intent_ref: platform.tenants
"""The control plane: Platform.Admin provisions, reads and changes tenants."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Response

from shared.api.problems import ProblemError
from shared.api.security import RequestContext, authenticated, authorize, record_mutation
from shared.db.session import platform_transaction
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor
from shared.policy.actions import Action
from shared.policy.authorizer import Resource
from shared.tenants.models import Tenant, TenantCreate, TenantPage, TenantStatus, TenantUpdate
from shared.tenants.repository import (
    TenantConflictError,
    create_tenant,
    etag,
    get_tenant,
    list_tenants,
    tenant_directory,
    update_tenant,
)

router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])
_PLATFORM = Resource("Platform", "platform", None, {})
Context = Annotated[RequestContext, Depends(authenticated)]


def _not_found(tenant_id: UUID) -> ProblemError:
    return ProblemError(404, "not-found", "Not found", f"No tenant {tenant_id}.")


@router.post("", status_code=201, response_model=Tenant, summary="Provision a tenant")
def create(spec: TenantCreate, response: Response, context: Context) -> Tenant:
    """Provision a tenant (Platform.Admin)."""
    authorize(context, Action.TENANT_CREATE, _PLATFORM, detail={"name": spec.name})
    with platform_transaction() as conn:
        try:
            tenant = create_tenant(conn, spec)
        except TenantConflictError:
            raise ProblemError(409, "conflict", "Conflict",
                               "A tenant with this name or Entra tenant id is already provisioned.") from None
    tenant_directory.forget()
    record_mutation(context, Action.TENANT_CREATE, Resource("Tenant", str(tenant.id), None, {}),
                    {"name": tenant.name, "status": tenant.status})
    response.headers["ETag"] = etag(tenant)
    response.headers["Location"] = f"/api/v1/tenants/{tenant.id}"
    return tenant


@router.get("", response_model=TenantPage, summary="List tenants")
def list_all(context: Context, limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT), cursor: str | None = None,
             status: TenantStatus | None = None) -> TenantPage:
    """Tenants by name, cursor-paginated (Platform.Admin)."""
    authorize(context, Action.TENANT_LIST, _PLATFORM)
    position = decode_cursor(cursor) or {}
    with platform_transaction() as conn:
        return list_tenants(conn, limit=limit, after_name=position.get("name"), status=status)


@router.get("/{tenant_id}", response_model=Tenant, summary="Read a tenant")
def read(tenant_id: UUID, response: Response, context: Context) -> Tenant:
    """One tenant with its ETag (Platform.Admin)."""
    authorize(context, Action.TENANT_READ, _PLATFORM, detail={"tenant_id": str(tenant_id)})
    with platform_transaction() as conn:
        tenant = get_tenant(conn, tenant_id)
    if tenant is None:
        raise _not_found(tenant_id)
    response.headers["ETag"] = etag(tenant)
    return tenant


@router.patch("/{tenant_id}", response_model=Tenant, summary="Change a tenant",
              responses={412: {"description": "The ETag in If-Match is stale"},
                         428: {"description": "If-Match is required"}})
def patch(tenant_id: UUID, change: TenantUpdate, response: Response, context: Context,
          if_match: Annotated[str | None, Header()] = None) -> Tenant:
    """Change status, quotas or allow-lists; `If-Match` with the tenant's ETag is required (Platform.Admin)."""
    authorize(context, Action.TENANT_UPDATE, _PLATFORM, detail={"tenant_id": str(tenant_id)})
    if not if_match:
        raise ProblemError(428, "precondition-required", "Precondition required",
                           "Send If-Match with the tenant's ETag.")
    with platform_transaction() as conn:
        current = get_tenant(conn, tenant_id)
        if current is None:
            raise _not_found(tenant_id)
        if if_match != etag(current):
            raise ProblemError(412, "precondition-failed", "Precondition failed",
                               "The tenant changed since that ETag was issued.")
        tenant = update_tenant(conn, tenant_id, change)
    assert tenant is not None  # noqa: S101  # it existed inside this transaction
    tenant_directory.forget()
    record_mutation(context, Action.TENANT_UPDATE, Resource("Tenant", str(tenant.id), None, {}),
                    change.model_dump(mode="json", exclude_unset=True))
    response.headers["ETag"] = etag(tenant)
    return tenant
