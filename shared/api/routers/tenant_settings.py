# intent_ref: platform.tenants
"""The caller's own tenant: Tenant.Admin reads it and changes its settings."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import FieldError, ProblemError, json_pointer
from shared.api.responses import AUTH_ERRORS, INVALID
from shared.api.security import RequestContext, authorize, record_mutation, tenant_resource
from shared.api.transactions import TenantConnection
from shared.modules.ssrf import private_network_allowed
from shared.policy.actions import Action
from shared.tenants.models import MAX_SETTING_VALUE_BYTES, SettingKey, TenantQuotas, TenantStatus
from shared.tenants.repository import SettingsTooLargeError, merge_own_settings, own_tenant
from shared.tenants.settings import settings_problems

router = APIRouter(prefix="/api/v1/tenant", tags=["tenants"], route_class=GuardedRoute)


class TenantSettings(BaseModel):
    """The tenant as its own admin sees it: limits set by the platform, settings set by the tenant."""

    name: str
    display_name: str
    status: TenantStatus
    quotas: TenantQuotas
    allowed_modules: list[str]
    allowed_targets: list[str]
    settings: dict[str, Any]


class TenantSettingsUpdate(BaseModel):
    """Settings the tenant manages itself (feature flags and the like); merged into the current ones."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"settings": {"audit_retention_days": 365, "feature.canary_deployments": True}}]
        },
    )

    settings: dict[SettingKey, Any] = Field(
        max_length=100,
        description="At most 100 keys per change; merged, the tenant's settings hold at most 200 keys and 64 KiB as"
        " JSON, and one setting at most 32 KiB.",
    )


@router.get("", response_model=TenantSettings, summary="Read the caller's tenant", responses=AUTH_ERRORS)
def read(
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_SETTINGS_READ))], conn: TenantConnection
) -> TenantSettings:
    """The caller's tenant and its settings (Tenant.Admin)."""
    resource = tenant_resource("Tenant", context.tenant.id, context.tenant.id)
    authorize(context, Action.TENANT_SETTINGS_READ, resource, conn=conn)
    return TenantSettings(**own_tenant(conn))


@router.patch(
    "",
    response_model=TenantSettings,
    summary="Change the caller's tenant settings",
    responses={**AUTH_ERRORS, 422: INVALID},
)
def update(
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_SETTINGS_UPDATE))],
    change: TenantSettingsUpdate,
    conn: TenantConnection,
) -> TenantSettings:
    """Merge settings into the tenant's own (Tenant.Admin); limits and allow-lists stay the platform's."""
    resource = tenant_resource("Tenant", context.tenant.id, context.tenant.id)
    authorize(context, Action.TENANT_SETTINGS_UPDATE, resource, conn=conn)
    problems = [
        *settings_problems(change.settings, allow_private=private_network_allowed()),
        *_oversized(change.settings),
    ]
    if problems:
        raise _invalid(problems)
    try:
        merge_own_settings(conn, change.settings)
    except SettingsTooLargeError as exc:
        raise _invalid([("/settings", str(exc))]) from None
    updated = TenantSettings(**own_tenant(conn))
    record_mutation(context, Action.TENANT_SETTINGS_UPDATE, resource, {"settings": sorted(change.settings)}, conn=conn)
    return updated


def _oversized(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """A problem for each setting whose JSON (UTF-8) is longer than one setting may be."""
    return [
        (json_pointer(("settings", key)), f"a setting is at most {MAX_SETTING_VALUE_BYTES} bytes as JSON")
        for key, value in settings.items()
        if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_SETTING_VALUE_BYTES
    ]


def _invalid(problems: list[tuple[str, str]]) -> ProblemError:
    """422 `validation-error` naming each problem as (JSON pointer into the request, what is wrong)."""
    return ProblemError(
        422,
        "validation-error",
        "Request validation failed",
        f"{len(problems)} invalid field(s)",
        errors=[FieldError(pointer=at, detail=detail) for at, detail in problems],
    )
