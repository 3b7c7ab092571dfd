# intent_ref: platform.tenants
"""The caller's own tenant: Tenant.Admin reads it and changes its settings."""

from __future__ import annotations

import json
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Header, Response
from psycopg.rows import DictRow
from pydantic import BaseModel, ConfigDict, Field

from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import ProblemError, invalid_fields, json_pointer
from shared.api.responses import AUTH_ERRORS, INVALID, PRECONDITION_FAILED
from shared.api.security import RequestContext, authorize, record_mutation, tenant_resource
from shared.api.transactions import TenantConnection
from shared.audit.factory import AUDIT_MAX_RETENTION_DAYS, AUDIT_MIN_RETENTION_DAYS, AUDIT_RETENTION_SETTING
from shared.etags import if_match_tags
from shared.modules.ssrf import private_network_allowed
from shared.policy.actions import Action
from shared.tenants.models import MAX_SETTING_VALUE_BYTES, SettingKey, TenantQuotas, TenantStatus
from shared.tenants.repository import (
    SettingsPreconditionFailedError,
    SettingsTooLargeError,
    merge_own_settings,
    own_tenant,
    settings_etag,
    settings_versions,
)
from shared.tenants.settings import settings_problems, unchanged_retention

router = APIRouter(prefix="/api/v1/tenant", tags=["tenants"], route_class=GuardedRoute)

_WITH_ETAG: dict[str, Any] = {
    "headers": {
        "ETag": {
            "description": 'The strong ETag of the tenant as shown (`"tenant.v<n>"`): any change of its settings, '
            "limits or allow-lists moves it. Send it back in If-Match.",
            "schema": {"type": "string"},
        }
    }
}
IfMatch = Annotated[
    str | None,
    Header(
        description="The ETag of the tenant as last read: a stale one is 412 and changes nothing; `*` matches. "
        "Optional (ADR 0045): without it the change applies to the settings as they are."
    ),
]


class TenantSettings(BaseModel):
    """The tenant as its own admin sees it: limits set by the platform, settings set by the tenant."""

    name: str
    display_name: str
    status: TenantStatus
    quotas: TenantQuotas
    allowed_modules: list[str]
    allowed_targets: list[str]
    settings: dict[str, Any] = Field(
        description="The tenant's own settings, as stored. An `audit_retention_days` below"
        f" {AUDIT_MIN_RETENTION_DAYS} (stored before the platform's floor existed) is applied as"
        f" {AUDIT_MIN_RETENTION_DAYS} days; sending it back unchanged is accepted and keeps it."
    )


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
        " JSON, and one setting at most 32 KiB. `audit_retention_days`, the days each audit record of the tenant is"
        " kept (Cosmos DB audit store; the Postgres store keeps every record until erasure), is a whole number from"
        f" {AUDIT_MIN_RETENTION_DAYS} (the platform's floor) to {AUDIT_MAX_RETENTION_DAYS}, or null to keep the"
        " records until the tenant is erased; anything else is 422, but for the value stored, sent back as read (one"
        f" below the floor, stored before it existed, stays and is applied as {AUDIT_MIN_RETENTION_DAYS} days).",
    )


@router.get(
    "",
    response_model=TenantSettings,
    summary="Read the caller's tenant",
    responses={**AUTH_ERRORS, 200: _WITH_ETAG},
)
def read(
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_SETTINGS_READ))],
    conn: TenantConnection,
    response: Response,
) -> TenantSettings:
    """The caller's tenant and its settings, with its ETag (Tenant.Admin)."""
    resource = tenant_resource("Tenant", context.tenant.id, context.tenant.id)
    authorize(context, Action.TENANT_SETTINGS_READ, resource, conn=conn)
    return _shown(conn, response)


@router.patch(
    "",
    response_model=TenantSettings,
    summary="Change the caller's tenant settings",
    responses={**AUTH_ERRORS, 200: _WITH_ETAG, 412: PRECONDITION_FAILED, 422: INVALID},
)
def update(
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_SETTINGS_UPDATE))],
    change: TenantSettingsUpdate,
    conn: TenantConnection,
    response: Response,
    if_match: IfMatch = None,
) -> TenantSettings:
    """Merge settings into the tenant's own (Tenant.Admin); limits and allow-lists stay the platform's. With
    `If-Match`, only into the settings that ETag was issued for: a stale one is 412 (before the settings are checked)
    and of two changes sent with one ETag exactly one applies. Without it the change applies to the settings as they
    are (ADR 0045). The answer carries the new ETag; a change that changes nothing (each key already holds the value
    sent) keeps it."""
    resource = tenant_resource("Tenant", context.tenant.id, context.tenant.id)
    authorize(context, Action.TENANT_SETTINGS_UPDATE, resource, conn=conn)
    tags = if_match_tags(if_match)
    current = own_tenant(conn)
    # Early, for the answer's sake: a stale ETag is 412 whatever else is wrong with the change. The merge compares
    # again, in its UPDATE, which is what keeps two changes with one ETag from both applying.
    if tags is not None and current["version"] not in settings_versions(tags):
        raise _stale()
    stored = current["settings"]
    problems = [
        *settings_problems(change.settings, allow_private=private_network_allowed(), stored=stored),
        *_oversized(change.settings),
    ]
    if problems:
        raise _invalid(problems)
    merged = dict(change.settings)
    if unchanged_retention(merged, stored):
        # Sent back as read, so not checked against the floor: it is left out of the merge, so that a value a
        # concurrent change set meanwhile is never put back below the floor by this one.
        del merged[AUDIT_RETENTION_SETTING]
    try:
        merge_own_settings(conn, merged, if_match=tags)
    except SettingsPreconditionFailedError:
        raise _stale() from None
    except SettingsTooLargeError as exc:
        raise _invalid([("/settings", str(exc))]) from None
    updated = _shown(conn, response)
    record_mutation(context, Action.TENANT_SETTINGS_UPDATE, resource, {"settings": sorted(change.settings)}, conn=conn)
    return updated


def _shown(conn: psycopg.Connection[DictRow], response: Response) -> TenantSettings:
    """The tenant as its admin sees it, its ETag set on `response`."""
    row = own_tenant(conn)
    response.headers["ETag"] = settings_etag(row.pop("version"))
    return TenantSettings(**row)


def _stale() -> ProblemError:
    return ProblemError(
        412,
        "precondition-failed",
        "Precondition failed",
        "The tenant's settings changed since that ETag was issued; GET them again.",
    )


def _oversized(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """A problem for each setting whose JSON (UTF-8) is longer than one setting may be."""
    return [
        (json_pointer(("settings", key)), f"a setting is at most {MAX_SETTING_VALUE_BYTES} bytes as JSON")
        for key, value in settings.items()
        if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_SETTING_VALUE_BYTES
    ]


def _invalid(problems: list[tuple[str, str]]) -> ProblemError:
    """422 `validation-error` naming each problem as (JSON pointer into the request, what is wrong)."""
    return invalid_fields(*problems)
