-- intent_ref: platform.tenants
-- migrate: no-transaction
-- The indexes of the executions' references to their parent and root execution (ADR 0012, amended 2026-12-08).
--
-- Deleting an execution checks that no execution of its tenant still names it (the foreign keys of
-- parent_execution_id, retry_of and root_execution_id, migrations 0012 and 0036): one lookup by (tenant_id, id) per
-- reference for every execution deleted. retry_of has its index (migration 0065); parent_execution_id had none, and
-- root_execution_id only a partial one over active executions, so each check read every execution of the tenant, and
-- an erasure's batch of a big tenant's executions (migration 0078) ran for tens of seconds, holding back every other
-- tenant's events meanwhile (the relay sends only those of transactions older than every one running).
--
-- Built CONCURRENTLY, so outside a transaction (ADR 0003, amended 2026-12-07): app.executions is written by every
-- start and every transition. Each statement ends its line.

CREATE INDEX CONCURRENTLY IF NOT EXISTS executions_tenant_parent ON app.executions (tenant_id, parent_execution_id)
    WHERE parent_execution_id IS NOT NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS executions_tenant_root ON app.executions (tenant_id, root_execution_id)
    WHERE root_execution_id IS NOT NULL;
