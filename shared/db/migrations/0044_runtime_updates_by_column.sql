-- intent_ref: platform.tenant-isolation
-- The runtime's UPDATE on shared tables, by column (ADR 0002, amended 2026-12-06). LOCK TABLE ignores row-level
-- security and takes any mode up to ACCESS EXCLUSIVE with table-level UPDATE: SQL running in one tenant's transaction
-- could lock app.rate_buckets (every request of every tenant takes a token there) or app.intents and hold up every
-- tenant for as long as its transaction lasted. UPDATE on columns allows the updates, ON CONFLICT DO UPDATE and
-- SELECT ... FOR UPDATE / FOR NO KEY UPDATE as before, but no lock mode beyond ROW EXCLUSIVE, which ordinary writes
-- take anyway. Each list is the columns the app's statements set (shared/**, take_request_token).
-- Not closed here: DELETE on a table allows every lock mode too, and the runtime keeps DELETE on
-- idempotency_keys, webhook_subscriptions, webhook_deliveries, tenant_policies, modules and audit_outbox.

-- A table-level REVOKE removes the column grants as well: each REVOKE comes before its GRANT.
REVOKE UPDATE ON app.rate_buckets FROM qp_runtime;
GRANT UPDATE (tokens, updated_at, allowed) ON app.rate_buckets TO qp_runtime;

REVOKE UPDATE ON app.intents FROM qp_runtime;
GRANT UPDATE (current_version, description, labels, status, archived_at, updated_at) ON app.intents TO qp_runtime;

REVOKE UPDATE ON app.work_pollers FROM qp_runtime;
GRANT UPDATE (last_polled_at, last_polled_by) ON app.work_pollers TO qp_runtime;

-- ON CONFLICT DO UPDATE SET purpose = EXCLUDED.purpose: the upsert that locks the row (shared/db/tenant_locks.py).
REVOKE UPDATE ON app.tenant_locks FROM qp_runtime;
GRANT UPDATE (purpose) ON app.tenant_locks TO qp_runtime;

REVOKE UPDATE ON app.idempotency_keys FROM qp_runtime;
GRANT UPDATE (response_status, response_body, response_headers) ON app.idempotency_keys TO qp_runtime;

REVOKE UPDATE ON app.webhook_subscriptions FROM qp_runtime;
GRANT UPDATE (url, event_types, description, enabled, disabled_reason, consecutive_failures, secret, updated_at)
    ON app.webhook_subscriptions TO qp_runtime;

REVOKE UPDATE ON app.webhook_deliveries FROM qp_runtime;
GRANT UPDATE (state, attempts, next_attempt_at, last_status, last_error, delivered_at)
    ON app.webhook_deliveries TO qp_runtime;
