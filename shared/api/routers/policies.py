# intent_ref: platform.access-control
"""A tenant's own Cedar policies: Tenant.Admin lists, adds and removes them."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from shared.api.accepted_input import TakesNoBody, no_body_doc
from shared.api.idempotency import idempotency_key as idempotency_key_header
from shared.api.idempotency import remember, replay_or_claim
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import FieldError, ProblemError
from shared.api.responses import AUTH_ERRORS, BAD_IDEMPOTENCY_KEY, INVALID, NOT_FOUND, problem_doc
from shared.api.security import RequestContext, authorize, record_mutation, tenant_resource
from shared.api.transactions import TenantConnection
from shared.policy.actions import Action
from shared.policy.authorizer import get_authorizer
from shared.policy.tenant_policies import (
    StoredTenantPolicyUnreadableError,
    TenantPolicy,
    TenantPolicyBudgetError,
    TenantPolicyConflictError,
    TenantPolicyCreate,
    TenantPolicyList,
    TenantPolicyQuotaError,
    add_policy,
    delete_policy,
    list_policies,
)

router = APIRouter(prefix="/api/v1/policies", tags=["policies"], route_class=GuardedRoute)


@router.get("", response_model=TenantPolicyList, summary="List the tenant's own policies", responses=AUTH_ERRORS)
def list_all(
    context: Annotated[RequestContext, Depends(permission(Action.POLICY_READ))], conn: TenantConnection
) -> TenantPolicyList:
    """The tenant's extra Cedar policies (Tenant.Admin)."""
    authorize(context, Action.POLICY_READ, tenant_resource("Policy", "*", context.tenant.id), conn=conn)
    return TenantPolicyList(items=list_policies(conn))


# The tenant's stored state, not the new policy, is at fault in each: the same request succeeds once it is changed.
_CREATE_CONFLICT = problem_doc(
    409,
    "conflict",
    "Conflict",
    "A resource with this name exists.",
    "The name is taken (`conflict`); the tenant has its most policies (`policy-quota`, the bound in `limit`); or a "
    "stored policy cannot be parsed, so what the tenant's policies cost cannot be counted "
    "(`stored-policy-unreadable`, naming it in `name` and `policy_id`: delete it first)",
)


@router.post(
    "",
    status_code=201,
    response_model=TenantPolicy,
    summary="Add a policy",
    responses={**AUTH_ERRORS, 400: BAD_IDEMPOTENCY_KEY, 409: _CREATE_CONFLICT, 422: INVALID},
)
def create(
    context: Annotated[RequestContext, Depends(permission(Action.POLICY_CREATE))],
    spec: TenantPolicyCreate,
    request: Request,
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
    conn: TenantConnection,
) -> TenantPolicy | Response:
    """Add a Cedar policy, validated against the schema first (Tenant.Admin). With `Idempotency-Key` a retry gets
    the first answer instead of 409."""
    authorize(context, Action.POLICY_CREATE, tenant_resource("Policy", spec.name, context.tenant.id), conn=conn)
    problems = get_authorizer().validate_tenant_policy(spec.policy)
    if problems:
        raise ProblemError(
            422,
            "invalid-policy",
            "Unprocessable content",
            "The policy does not validate.",
            errors=[FieldError(pointer="/policy", detail=p) for p in problems],
        )
    replay = replay_or_claim(conn, idempotency_key, request, spec.model_dump(mode="json"))
    if replay is not None:
        return replay
    try:
        policy = add_policy(conn, context.tenant.id, spec, context.principal.id)
    except TenantPolicyConflictError:
        raise ProblemError(409, "conflict", "Conflict", f"A policy named {spec.name!r} exists.") from None
    except TenantPolicyQuotaError as exc:
        raise ProblemError(409, "policy-quota", "Conflict", str(exc), extensions={"limit": exc.limit}) from None
    except StoredTenantPolicyUnreadableError as exc:
        # The tenant's stored state, not the request, is at fault (as with the quota): the new policy is fine.
        raise ProblemError(
            409,
            "stored-policy-unreadable",
            "Conflict",
            str(exc),
            extensions={"policy_id": str(exc.policy_id), "name": exc.name},
        ) from None
    except TenantPolicyBudgetError as exc:
        raise ProblemError(
            422,
            "invalid-policy",
            "Unprocessable content",
            "The policy does not validate.",
            errors=[FieldError(pointer="/policy", detail=str(exc))],
            extensions={"limit": exc.limit},
        ) from None
    record_mutation(
        context,
        Action.POLICY_CREATE,
        tenant_resource("Policy", policy.id, context.tenant.id),
        {"name": policy.name},
        conn=conn,
    )
    headers = {"Location": f"/api/v1/policies/{policy.id}"}
    content = policy.model_dump(mode="json")
    remember(conn, idempotency_key, 201, content, headers)
    return JSONResponse(content, status_code=201, headers=headers)


@router.delete(
    "/{policy_id}",
    status_code=204,
    summary="Remove a policy",
    responses={**AUTH_ERRORS, 404: NOT_FOUND, 422: no_body_doc("the policy id is not a UUID")},
)
def delete(
    policy_id: UUID,
    context: Annotated[RequestContext, Depends(permission(Action.POLICY_DELETE, resource_param="policy_id"))],
    _no_body: TakesNoBody,
    conn: TenantConnection,
) -> Response:
    """Remove one of the tenant's policies (Tenant.Admin); another tenant's id is 404. The request takes no body: a
    body is refused with 422 and removes nothing."""
    authorize(context, Action.POLICY_DELETE, tenant_resource("Policy", policy_id, context.tenant.id), conn=conn)
    if not delete_policy(conn, context.tenant.id, policy_id):
        raise ProblemError(404, "not-found", "Not found", f"No policy {policy_id}.")
    record_mutation(
        context, Action.POLICY_DELETE, tenant_resource("Policy", policy_id, context.tenant.id), {}, conn=conn
    )
    return Response(status_code=204)
