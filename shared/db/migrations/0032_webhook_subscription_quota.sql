-- intent_ref: platform.events
-- A tenant's webhook subscriptions are bounded (ADR 0030 amended): a create counts the tenant's subscriptions under
-- a lock of its own, so that creates sent at once cannot pass the quota together.

ALTER TABLE app.tenant_locks DROP CONSTRAINT tenant_locks_purpose_check;
ALTER TABLE app.tenant_locks ADD CONSTRAINT tenant_locks_purpose_check
    CHECK (purpose IN ('executions', 'outbox-relay', 'webhook-subscriptions'));
