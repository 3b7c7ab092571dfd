# intent_ref: platform.access-control
"""The actions the Authorizer decides; each value is a Cedar action id in schema.cedarschema."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """Every action an API route or a step asks the Authorizer about; the Authorizer checks it matches the schema."""

    # Platform.Admin, on the Platform resource.
    TENANT_CREATE = "tenant.create"
    TENANT_READ = "tenant.read"
    TENANT_UPDATE = "tenant.update"
    TENANT_LIST = "tenant.list"
    TENANT_EXPORT = "tenant.export"
    TENANT_ERASE = "tenant.erase"

    # Tenant.Admin, on its own tenant's resources.
    TENANT_SETTINGS_READ = "tenant.settings.read"
    TENANT_SETTINGS_UPDATE = "tenant.settings.update"
    POLICY_READ = "policy.read"
    POLICY_CREATE = "policy.create"
    POLICY_DELETE = "policy.delete"
    AUDIT_READ = "audit.read"
    MODULE_REGISTER = "module.register"
    WEBHOOK_READ = "webhook.read"
    WEBHOOK_MANAGE = "webhook.manage"

    # Reader and above. `*.list` is decided on the Tenant that owns the collection.
    INTENT_READ = "intent.read"
    INTENT_LIST = "intent.list"
    BLUEPRINT_READ = "blueprint.read"
    BLUEPRINT_LIST = "blueprint.list"
    EXECUTION_READ = "execution.read"
    EXECUTION_LIST = "execution.list"
    MODULE_READ = "module.read"
    MODULE_LIST = "module.list"
    INGRESS_REJECTION_LIST = "ingress.rejection.list"

    # Author.
    INTENT_CREATE = "intent.create"
    INTENT_UPDATE = "intent.update"
    INTENT_ARCHIVE = "intent.archive"
    INTENT_ROLLBACK = "intent.rollback"
    BLUEPRINT_CREATE = "blueprint.create"
    BLUEPRINT_UPDATE = "blueprint.update"
    BLUEPRINT_ARCHIVE = "blueprint.archive"
    BLUEPRINT_ROLLBACK = "blueprint.rollback"

    # Executor (non-production targets), Deployer (any target), Approver, and the requester (cancel).
    INTENT_EXECUTE = "intent.execute"
    EXECUTION_CANCEL = "execution.cancel"
    EXECUTION_APPROVE = "execution.approve"

    # Module.Worker (a tenant's daemon that runs its remote actions): lease and heartbeat its tenant's queued work;
    # the queue is listed by workers and by every reader of the tenant.
    WORK_LEASE = "work.lease"
    WORK_HEARTBEAT = "work.heartbeat"
    WORK_LIST = "work.list"


PLATFORM_ACTIONS = frozenset(
    {
        Action.TENANT_CREATE,
        Action.TENANT_READ,
        Action.TENANT_UPDATE,
        Action.TENANT_LIST,
        Action.TENANT_EXPORT,
        Action.TENANT_ERASE,
    }
)
"""Control-plane actions: tenant policies may not name them (they are not the tenant's to restrict)."""

POLICY_ADMIN_ACTIONS = frozenset({Action.POLICY_READ, Action.POLICY_CREATE, Action.POLICY_DELETE})
"""Tenant policies may not name these, so a Tenant.Admin can always remove a policy that locked the tenant out."""

TENANT_POLICY_ACTIONS = frozenset(Action) - PLATFORM_ACTIONS - POLICY_ADMIN_ACTIONS
"""The actions a tenant's own (forbid) policies may restrict."""
