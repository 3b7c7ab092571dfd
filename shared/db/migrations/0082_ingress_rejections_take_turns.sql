-- intent_ref: platform.ingress
-- A tenant's records of rejected intent-requests events take turns (ADR 0019, amended 2026-12-08).
--
-- Each rejection's trim (migration 0079) updates and deletes the tenant's rows: past the tenant's bound it ranks all
-- of them and makes markers of the deepest, row by row, in no order another trim shares. Two at once took each
-- other's rows and deadlocked, and the markers' bounds were serialised by a transaction advisory lock keyed by the
-- tenant, which any session on the app's login could hold, stalling that tenant's starts (a rejection is recorded
-- under the start lock) until the statement timeout: the stall migration 0030 removed advisory locks to prevent.
-- A record of a rejection now takes a lock row of its own first (`ingress-rejections`, shared/ingress/rejections.py),
-- after the start lock when it holds that, held until the commit: the tenant's trims run one after the other, and only
-- the tenant's own transactions can see, and so take, its row. Migration 0079's function takes no advisory lock.

ALTER TABLE app.tenant_locks DROP CONSTRAINT tenant_locks_purpose_check;
ALTER TABLE app.tenant_locks ADD CONSTRAINT tenant_locks_purpose_check
    CHECK (purpose IN (
        'executions', 'outbox-relay', 'webhook-subscriptions', 'tenant-policies', 'tenant-modules', 'intent-runs',
        'ingress-rejections'
    ));
