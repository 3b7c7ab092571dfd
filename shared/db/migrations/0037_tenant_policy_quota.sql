-- intent_ref: platform.access-control
-- A tenant's own policies are bounded (ADR 0011, amended 2026-12-05): a create counts the tenant's policies under a
-- lock of its own, so that creates sent at once cannot pass the bound together. Every decision of the tenant builds
-- a policy set of all of them, and 400 policies of 10,000 characters took seconds to build on every change.

ALTER TABLE app.tenant_locks DROP CONSTRAINT tenant_locks_purpose_check;
ALTER TABLE app.tenant_locks ADD CONSTRAINT tenant_locks_purpose_check
    CHECK (purpose IN ('executions', 'outbox-relay', 'webhook-subscriptions', 'tenant-policies'));
