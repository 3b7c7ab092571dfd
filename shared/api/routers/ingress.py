# intent_ref: platform.ingress
"""The intent-requests ingress read API: the events of the caller's tenant that started nothing, and why."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from shared.api.permissions import GuardedRoute, permission
from shared.api.responses import AUTH_ERRORS, BAD_CURSOR, INVALID
from shared.api.security import RequestContext, authorize
from shared.api.transactions import TenantConnection
from shared.ingress.rejections import Rejection, list_rejections
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from shared.policy.actions import Action
from shared.policy.authorizer import Resource

router = APIRouter(prefix="/api/v1/ingress", tags=["ingress"], route_class=GuardedRoute)

_REJECTION_EXAMPLE: dict[str, Any] = {
    "id": "8a1c2e3f-4b5d-4e6f-8a9b-0c1d2e3f4a5b",
    "reason": "not_found",
    "detail": {
        "type": "https://quantum-platform.dev/problems/not-found",
        "title": "Not found",
        "status": 404,
        "detail": "No intent 0b6f3c1e-5d2a-4c1f-9e7b-2a8d4f6c9e10.",
        "instance": "intent-requests/8a1c2e3f-4b5d-4e6f-8a9b-0c1d2e3f4a5b",
    },
    "event": {
        "hub": "intent-requests",
        "partition_id": "3",
        "enqueued_time": "2025-01-05T09:30:00Z",
    },
    "requested_by": "72f988bf-86f1-41af-91ab-2d7cd011db47/1b2c3d4e-0000-4000-8000-000000000001",
    "idempotency_key": "release-1.2.3",
    "created_at": "2025-01-05T09:30:01Z",
}


class IngressEventRef(BaseModel):
    """Where the event was on the hub. Not its sequence number: the gaps between a tenant's own would count the other
    producers' events on that partition."""

    hub: str
    partition_id: str
    enqueued_time: datetime | None = Field(description="When the hub accepted the event (the token is judged then).")


class RejectionOut(BaseModel):
    """An event that started nothing."""

    model_config = ConfigDict(json_schema_extra={"examples": [_REJECTION_EXAMPLE]})

    id: UUID
    reason: str = Field(description="invalid, forbidden, not_found, conflict, quota_exceeded or stale.")
    detail: dict[str, Any] = Field(description="A problem+json object: what the execute route would have answered.")
    event: IngressEventRef
    requested_by: str | None = Field(description="The principal of the event's token.")
    idempotency_key: str | None = Field(description="The body's key, when the body could be read.")
    created_at: datetime


class RejectionPage(BaseModel):
    """One page of rejections, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_REJECTION_EXAMPLE], "next_cursor": None}]})

    items: list[RejectionOut]
    next_cursor: str | None


def _out(row: Rejection) -> RejectionOut:
    return RejectionOut(
        id=row.id,
        reason=row.reason,
        detail=row.detail,
        event=IngressEventRef(
            hub=row.hub,
            partition_id=row.partition_id,
            enqueued_time=row.enqueued_time,
        ),
        requested_by=row.requested_by,
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
    )


@router.get(
    "/rejections",
    response_model=RejectionPage,
    summary="List rejected intent requests",
    responses={**AUTH_ERRORS, 400: BAD_CURSOR, 422: INVALID},
)
def rejections(
    context: Annotated[RequestContext, Depends(permission(Action.INGRESS_REJECTION_LIST))],
    conn: TenantConnection,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> RejectionPage:
    """The tenant's intent-requests events that could not start anything (bad body, unknown intent, refused,
    over quota, stale), newest first, with the problem each would have got from the API; cursor-paginated (Reader).
    Events whose token was missing or invalid name no tenant, so they are never listed here. The newest 1,000 of the
    last 30 days are kept."""
    authorize(context, Action.INGRESS_REJECTION_LIST, Resource.tenant(context.tenant.id), conn=conn)
    rows, next_cursor = list_rejections(conn, cursor=cursor, limit=limit)
    return RejectionPage(items=[_out(row) for row in rows], next_cursor=next_cursor)
