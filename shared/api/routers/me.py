# intent_ref: platform.identity
"""Who am I: the caller as the platform sees it."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from shared.api.responses import AUTH_ERRORS
from shared.api.security import RequestContext, authenticated

router = APIRouter(prefix="/api/v1", tags=["identity"])


class Me(BaseModel):
    """The authenticated caller."""

    principal_id: str
    tenant_id: UUID
    tenant_name: str
    entra_tenant_id: UUID
    object_id: UUID
    roles: list[str]
    scopes: list[str]
    app_only: bool


@router.get("/me", response_model=Me, summary="The authenticated caller and its tenant", responses=AUTH_ERRORS)
def me(context: RequestContext = Depends(authenticated)) -> Me:  # noqa: B008
    """The caller's identity, roles and tenant (no tenant data)."""
    p = context.principal
    return Me(
        principal_id=p.id,
        tenant_id=context.tenant.id,
        tenant_name=context.tenant.name,
        entra_tenant_id=p.entra_tenant_id,
        object_id=p.object_id,
        roles=sorted(p.roles),
        scopes=sorted(p.scopes),
        app_only=p.app_only,
    )
