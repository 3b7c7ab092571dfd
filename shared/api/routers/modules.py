# intent_ref: platform.modules
"""The module catalog a tenant's steps may use, remote module registration, and the intent definition schema."""

from __future__ import annotations

import copy
import functools
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from shared.api.idempotency import idempotency_key as idempotency_key_header
from shared.api.idempotency import remember, replay_or_claim
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import ProblemError
from shared.api.responses import BAD_IDEMPOTENCY_KEY, problem_doc
from shared.api.security import (
    RequestContext,
    authenticated,
    authorize,
    readable,
    record_mutation,
    tenant_resource,
)
from shared.api.transactions import TenantConnection
from shared.policy.actions import Action
from shared.policy.authorizer import Resource
from shared.registry.model import ACTION_PATTERN, READ_ONLY_FIELDS, IntentDefinitionIn
from shared.registry.modules import (
    JSON_SCHEMA_2020_12,
    MODULE_EXAMPLE,
    ModuleConflictError,
    ModuleInfo,
    ModuleList,
    ModuleRegistration,
    get_module,
    list_modules,
    register_module,
)

router = APIRouter(tags=["modules"], route_class=GuardedRoute)
Context = Annotated[RequestContext, Depends(authenticated)]


_COMMON: dict[int | str, dict[str, Any]] = {
    401: problem_doc(401, "invalid-token", "Unauthorized", "the token has expired", "No valid bearer token"),
    403: problem_doc(
        403,
        "forbidden",
        "Forbidden",
        "Not allowed to module.list.",
        "The caller's roles or the tenant's policies do not allow it, or the tenant is suspended",
        reason="role_required",
    ),
    429: problem_doc(
        429,
        "rate-limited",
        "Too many requests",
        "This tenant is over its request rate; retry in 3 s.",
        "Over the tenant's request rate (see Retry-After)",
    ),
}

_BAD_QUERY = problem_doc(
    422,
    "validation-error",
    "Request validation failed",
    "1 invalid field(s)",
    "A malformed action name or query parameter",
    errors=[{"pointer": "/query/include_disallowed", "detail": "Input should be a valid boolean"}],
)


def _ok(example: Any) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": example}}}}


@router.get(
    "/api/v1/modules",
    response_model=ModuleList,
    summary="List the actions the tenant may use",
    responses={**_ok({"items": [MODULE_EXAMPLE]}), **_COMMON, 422: _BAD_QUERY},
)
def list_all(
    context: Annotated[RequestContext, Depends(permission(Action.MODULE_LIST))],
    conn: TenantConnection,
    include_disallowed: bool = Query(
        False, description="Also list actions that the tenant's allow-list refuses (flagged allowed=false)."
    ),
) -> ModuleList:
    """Built-in and registered remote modules with their parameter JSON Schema, defaults and timeout (Reader).

    By default only what the tenant's allow-list permits, decided exactly as the save-time gates decide it. Each
    module is decided as reading it alone is: the ones a tenant policy forbids the caller to read are left out.
    """
    # The listing is decided on the Tenant; its modules each on itself (ADR 0011, amended 2026-12-07), else a forbid
    # on reading one showed its parameter schema and defaults.
    authorize(context, Action.MODULE_LIST, Resource.tenant(context.tenant.id), conn=conn)
    items = list_modules(conn, context.tenant_facts, include_disallowed=include_disallowed)
    readable_items = readable(
        context,
        Action.MODULE_READ,
        items,
        lambda module: _module_resource(context, module.action),
        lambda module: module.action,
        conn=conn,
    )
    return ModuleList(items=readable_items)


def _module_resource(context: RequestContext, action: str) -> Resource:
    """The module `action` as a decision on it sees it (the one `GET /modules/{action}` reads it by)."""
    return tenant_resource("Module", action, context.tenant.id, name=action)


@router.get(
    "/api/v1/modules/{action}",
    response_model=ModuleInfo,
    summary="Read one action of the catalog",
    responses={
        **_ok(MODULE_EXAMPLE),
        **_COMMON,
        422: _BAD_QUERY,
        404: problem_doc(
            404,
            "not-found",
            "Not found",
            "No module 'helm-upgrade'.",
            "Neither a built-in nor registered by this tenant",
        ),
    },
)
def read(
    context: Annotated[RequestContext, Depends(permission(Action.MODULE_READ, resource_param="action"))],
    conn: TenantConnection,
    action: str = Path(pattern=ACTION_PATTERN, max_length=128),
) -> ModuleInfo:
    """One built-in or registered module, also when the allow-list refuses it (`allowed` says so) (Reader).

    Another tenant's module is 404: registrations are read under the caller's tenant only.
    """
    authorize(context, Action.MODULE_READ, _module_resource(context, action), conn=conn)
    module = get_module(conn, context.tenant_facts, action)
    if module is None:
        raise ProblemError(404, "not-found", "Not found", f"No module {action!r}.")
    return module


@router.post(
    "/api/v1/modules",
    status_code=201,
    response_model=ModuleInfo,
    summary="Register a remote module",
    responses={
        201: {"content": {"application/json": {"example": MODULE_EXAMPLE}}},
        **_COMMON,
        400: BAD_IDEMPOTENCY_KEY,
        409: problem_doc(
            409,
            "conflict",
            "Conflict",
            "'helm-upgrade' is already registered for this tenant",
            "The action is registered already, or is (in the family of) a built-in",
            conflict="registered",
        ),
        422: problem_doc(
            422,
            "validation-error",
            "Request validation failed",
            "1 invalid field(s)",
            "The body, the parameter schema or the defaults are invalid",
            errors=[
                {
                    "pointer": "/params_schema/properties/chart/type",
                    "detail": "'strin' is not valid under any of the given schemas",
                }
            ],
        ),
    },
)
def register(
    context: Annotated[RequestContext, Depends(permission(Action.MODULE_REGISTER))],
    registration: ModuleRegistration,
    request: Request,
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
    conn: TenantConnection,
) -> ModuleInfo | Response:
    """Register an action that the tenant's own worker handles, leasing its work from the tenant's work queue
    (Tenant.Admin).

    The parameter schema must be a JSON Schema 2020-12 of type object; its problems are reported with pointers (at
    most 50). Its `$ref`s must be local JSON pointers that lead somewhere, with no cycles, at most 64 of them, and
    at most 10,000 subschema visits added to one evaluation.
    The action may not be, or be in the family of, a built-in module: allow-lists name families. With
    `Idempotency-Key` a retry gets the first answer instead of 409.
    """
    resource = tenant_resource("Module", registration.action, context.tenant.id, name=registration.action)
    authorize(context, Action.MODULE_REGISTER, resource, conn=conn, detail={"action": registration.action})
    replay = replay_or_claim(conn, idempotency_key, request, registration.model_dump(mode="json"))
    if replay is not None:
        return replay
    try:
        register_module(conn, context.tenant.id, registration, context.principal.id)
    except ModuleConflictError as exc:
        raise ProblemError(409, "conflict", "Conflict", exc.message, extensions={"conflict": exc.kind}) from None
    record_mutation(
        context,
        Action.MODULE_REGISTER,
        resource,
        {"action": registration.action, "timeout_s": registration.timeout_s},
        conn=conn,
    )
    module = get_module(conn, context.tenant_facts, registration.action)
    assert module is not None  # inserted in this very transaction
    headers = {"Location": f"/api/v1/modules/{registration.action}"}
    content = module.model_dump(mode="json")
    remember(conn, idempotency_key, 201, content, headers)
    return JSONResponse(content, status_code=201, headers=headers)


@functools.cache
def _intent_schema() -> dict[str, Any]:
    schema = IntentDefinitionIn.model_json_schema()
    # A stored intent may be sent back as read (the seed's registry example is one): these are accepted, ignored.
    schema["properties"].update(
        {name: {"readOnly": True, "description": "Read-only; ignored on input."} for name in sorted(READ_ONLY_FIELDS)}
    )
    return {"$schema": JSON_SCHEMA_2020_12, **schema}


@router.get(
    "/api/v1/schemas/intent",
    response_model=dict[str, Any],
    summary="The JSON Schema of an intent (or blueprint) definition",
    responses={
        **_ok(
            {
                "$schema": JSON_SCHEMA_2020_12,
                "title": "IntentDefinitionIn",
                "type": "object",
                "required": ["name", "definition"],
                "properties": {"name": {"type": "string"}},
            }
        ),
        401: _COMMON[401],
        429: _COMMON[429],
        403: problem_doc(
            403,
            "tenant-suspended",
            "Forbidden",
            "This tenant is suspended.",
            "The caller's tenant is suspended",
            reason="tenant_suspended",
        ),
    },
)
def intent_schema(context: Context) -> dict[str, Any]:  # noqa: ARG001  # the dependency authenticates
    """The JSON Schema 2020-12 of a POST/PUT body of /api/v1/intents and /api/v1/blueprints (any authenticated caller).

    Authenticated and rate-limited, but no ABAC decision: the document is the same for every tenant, holds no
    tenant data and is published in the OpenAPI document anyway, so a decision (and an audit record per editor
    fetch) would guard nothing. Per-module parameter schemas, which are tenant data, are under /api/v1/modules.
    """
    return copy.deepcopy(_intent_schema())
