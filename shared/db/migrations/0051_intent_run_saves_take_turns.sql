-- intent_ref: platform.registry
-- A tenant's saves of intents that run intents take turns (ADR 0014, amended 2026-12-06).
--
-- A save refuses an intent whose `intent.run` steps come back to it through the tenant's stored intents, reading
-- them in its own transaction. Two saves at once each read the other's old version: saving A (runs B) and B (runs A)
-- side by side, both found no cycle and both committed one. Such saves now take a lock of their own before the walk,
-- held until the commit, so the second walks what the first committed and is refused. Only saves whose steps run an
-- intent take it: a version that runs none cannot be on a cycle, and other saves go on side by side.

ALTER TABLE app.tenant_locks DROP CONSTRAINT tenant_locks_purpose_check;
ALTER TABLE app.tenant_locks ADD CONSTRAINT tenant_locks_purpose_check
    CHECK (purpose IN (
        'executions', 'outbox-relay', 'webhook-subscriptions', 'tenant-policies', 'tenant-modules', 'intent-runs'
    ));
