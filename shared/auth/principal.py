# intent_ref: platform.identity
"""The authenticated caller of a request, scoped to exactly one provisioned tenant."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

PLATFORM_ADMIN = "Platform.Admin"
TENANT_ADMIN = "Tenant.Admin"
INTENT_READER = "Intent.Reader"
INTENT_AUTHOR = "Intent.Author"
INTENT_EXECUTOR = "Intent.Executor"
INTENT_DEPLOYER = "Intent.Deployer"
INTENT_APPROVER = "Intent.Approver"
MODULE_WORKER = "Module.Worker"
APP_ROLES = frozenset(
    {
        PLATFORM_ADMIN,
        TENANT_ADMIN,
        INTENT_READER,
        INTENT_AUTHOR,
        INTENT_EXECUTOR,
        INTENT_DEPLOYER,
        INTENT_APPROVER,
        MODULE_WORKER,
    }
)


@dataclass(frozen=True)
class Principal:
    """A verified caller: (Entra tenant, object id) mapped to a platform tenant; never identified by email."""

    tenant_id: UUID
    """The platform tenant the caller's Entra tenant (`tid`) is provisioned as."""
    entra_tenant_id: UUID
    object_id: UUID
    roles: frozenset[str]
    scopes: frozenset[str]
    app_only: bool
    display_name: str | None = None

    @property
    def id(self) -> str:
        """A stable identifier of the caller: `<tid>/<oid>` (oid alone is only unique within its tenant)."""
        return f"{self.entra_tenant_id}/{self.object_id}"

    def has_role(self, role: str) -> bool:
        """Whether the token carried this app role."""
        return role in self.roles


@dataclass(frozen=True)
class Requester:
    """Who asked for an execution, with the authority their token carried then: what the execution's child
    intents are started with (a child never runs on more authority than its root's requester had)."""

    id: str
    """The principal's `<tid>/<oid>` (Principal.id), recorded as the execution's `requested_by`."""
    roles: frozenset[str]
    app_only: bool

    @classmethod
    def of(cls, principal: Principal) -> Requester:
        """The requester a verified caller is."""
        return cls(principal.id, principal.roles, principal.app_only)

    def principal(self, tenant_id: UUID) -> Principal:
        """The principal as policies see it again (id, roles, tenant, app_only); no scopes, no display name."""
        entra_tenant_id, _, object_id = self.id.partition("/")
        return Principal(
            tenant_id=tenant_id,
            entra_tenant_id=UUID(entra_tenant_id),
            object_id=UUID(object_id),
            roles=self.roles,
            scopes=frozenset(),
            app_only=self.app_only,
        )
