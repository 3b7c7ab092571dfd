# intent_ref: platform.tenants
"""Tenant records and the request and response models of the tenants API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from shared.free_text import SHOWN, SHOWN_AS_WRITTEN
from shared.policy.facts import TenantFacts

TenantStatus = Literal["active", "suspended"]
# A DNS-label-like slug: lower-case letters and digits, single hyphens between them (2 to 63 characters, by the
# fields' length bounds). `ab-` and `x--y` read as typos or truncations in every listing, URL and log line.
_NAME = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
AllowedItem = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
"""A module (action) name or a target name a tenant is allowed to use."""

MAX_SETTINGS_KEYS = 200
"""Top-level keys a tenant's own settings document may hold once a change is merged into it."""
MAX_SETTINGS_BYTES = 64 * 1024
"""The largest settings document, as the JSON text Postgres renders: every GET returns it, every step dispatch reads
it."""
MAX_SETTING_VALUE_BYTES = 32 * 1024
"""The largest single setting as JSON (UTF-8): room for the longest allow-list (100 hosts of 253 characters)."""
MAX_SETTING_KEY_LENGTH = 128
SettingKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SETTING_KEY_LENGTH)]
"""The name of one of a tenant's own settings."""


def _issued_by_entra(value: UUID) -> UUID:
    """An Entra tenant id as Entra issues them: never the nil UUID, which names no directory and which the edge
    refuses as a token's `tid` (a tenant provisioned for it could never be signed in to)."""
    if value.int == 0:
        raise PydanticCustomError("nil_entra_tenant_id", "the nil UUID is not an Entra tenant id")
    return value


EntraTenantId = Annotated[UUID, AfterValidator(_issued_by_entra)]
"""The Entra ID tenant (`tid`) a tenant is provisioned for."""


DisplayName = Annotated[str, Field(max_length=200, description=f"A name for people to read: {SHOWN_AS_WRITTEN}"), SHOWN]
"""A tenant's display name, shown as written in terminals, logs and consoles."""


class TenantQuotas(BaseModel):
    """Per-tenant limits; absent values fall back to the platform's defaults."""

    model_config = ConfigDict(extra="forbid")

    # Strict: `true`, "60" and 7.0 are a caller's mistakes (shared/ratelimit.py calls `true` in a quota one), not
    # 1, 60 and 7: refused with 422 rather than stored as the number they would be coerced to.
    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)
    burst: int | None = Field(default=None, ge=1, le=100_000, strict=True)
    max_concurrent_executions: int | None = Field(default=None, ge=0, le=100_000, strict=True)
    max_webhook_subscriptions: int | None = Field(default=None, ge=0, le=10_000, strict=True)


class TenantCreate(BaseModel):
    """What Platform.Admin sends to provision a tenant."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "northwind",
                    "display_name": "Northwind Traders",
                    "entra_tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                    "allowed_targets": ["staging", "production"],
                    "allowed_modules": ["http", "artifact", "build-container", "deploy-to-kubernetes"],
                    "quotas": {"requests_per_minute": 600, "burst": 100, "max_concurrent_executions": 20},
                }
            ]
        },
    )

    name: str = Field(
        pattern=_NAME,
        min_length=2,
        max_length=63,
        description="Unique slug of the tenant: 2 to 63 lower-case letters and digits, single hyphens between them",
    )
    display_name: DisplayName = ""
    entra_tenant_id: EntraTenantId = Field(
        description="The Entra ID tenant (`tid`) whose tokens act for this tenant (never the nil UUID)"
    )
    status: TenantStatus = "active"
    quotas: TenantQuotas = Field(default_factory=TenantQuotas)
    allowed_modules: list[AllowedItem] = Field(default_factory=list, max_length=500)
    allowed_targets: list[AllowedItem] = Field(default_factory=list, max_length=100)


class TenantUpdate(BaseModel):
    """A partial update (JSON merge semantics: absent fields stay as they are)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"status": "suspended"},
                {"quotas": {"requests_per_minute": 1200}, "allowed_targets": ["staging"]},
            ]
        },
    )

    display_name: DisplayName | None = None
    status: TenantStatus | None = None
    quotas: TenantQuotas | None = None
    allowed_modules: list[AllowedItem] | None = Field(default=None, max_length=500)
    allowed_targets: list[AllowedItem] | None = Field(default=None, max_length=100)


class Tenant(BaseModel):
    """A tenant as stored and as returned by the API."""

    id: UUID
    name: str
    display_name: str
    entra_tenant_id: UUID
    status: TenantStatus
    quotas: TenantQuotas
    allowed_modules: list[str]
    allowed_targets: list[str]
    created_at: datetime
    updated_at: datetime
    erasing_since: datetime | None = Field(
        default=None,
        description="When the tenant's erasure began; set, the erasure must be completed (sent again after a failure)"
        " and no change of status is accepted (ADR 0012)",
    )

    def facts(self) -> TenantFacts:
        """The attributes policies and gates decide on."""
        return TenantFacts(
            id=self.id,
            status=self.status,
            allowed_targets=frozenset(self.allowed_targets),
            allowed_modules=frozenset(self.allowed_modules),
        )


class TenantPage(BaseModel):
    """One page of tenants."""

    items: list[Tenant]
    next_cursor: str | None
