# intent_ref: platform.access-control
"""What the Authorizer and the tenant gates know about the caller's tenant (a snapshot of its row)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

TENANT_ACTIVE = "active"
TENANT_SUSPENDED = "suspended"


@dataclass(frozen=True)
class TenantFacts:
    """The principal's tenant as the policies see it; allow-lists are explicit (empty allows nothing, ADR 0011)."""

    id: UUID
    status: str
    allowed_targets: frozenset[str]
    allowed_modules: frozenset[str]
