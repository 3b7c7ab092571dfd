-- intent_ref: platform.tenant-isolation
-- Per-tenant locks that no other tenant's SQL can take or hold.
--
-- A start serialised its quota check on a transaction advisory lock keyed by a hash of the tenant's id, and the
-- outbox relay took one the same way. Advisory locks are one namespace for the whole database: any SQL can compute
-- another tenant's key (or read the keys in use from pg_locks) and take it at session level, which outlives its
-- transaction on a pooled connection, stalling that tenant's starts (and stopping its relay) for as long as the
-- connection lives. These locks are row locks now, on one row per tenant and purpose: row-level security shows a
-- transaction only its own tenant's rows, and a row lock ends with the transaction that took it.
--
-- UNLOGGED: a lock row is disposable (a crash empties the table, and the next lock inserts the row again), and
-- taking one rewrites the row, which needs no WAL.

CREATE UNLOGGED TABLE app.tenant_locks (
    tenant_id  uuid NOT NULL REFERENCES app.tenants (id) ON DELETE CASCADE,
    purpose    text NOT NULL CHECK (purpose IN ('executions', 'outbox-relay')),
    PRIMARY KEY (tenant_id, purpose)
);

SELECT app.enable_tenant_isolation('app.tenant_locks');

GRANT SELECT, INSERT, UPDATE ON app.tenant_locks TO qp_runtime;

-- Erased with its tenant, as the rate buckets are (migration 0007).
GRANT DELETE ON app.tenant_locks TO qp_platform;
CREATE POLICY platform_erase ON app.tenant_locks FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
