-- intent_ref: platform.modules
-- A tenant's registered modules are bounded (ADR 0027, amended 2026-12-05): a registration counts the tenant's
-- modules under a lock of its own, so that registrations sent at once cannot pass the bound together. Every
-- validation of the tenant's definitions builds a catalog of all of them.

ALTER TABLE app.tenant_locks DROP CONSTRAINT tenant_locks_purpose_check;
ALTER TABLE app.tenant_locks ADD CONSTRAINT tenant_locks_purpose_check
    CHECK (purpose IN ('executions', 'outbox-relay', 'webhook-subscriptions', 'tenant-policies', 'tenant-modules'));
