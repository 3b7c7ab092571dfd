-- intent_ref: platform.events
-- migrate: no-transaction
-- The indexes of the retention of delivered webhook deliveries and published domain events (migration 0073, ADR 0049).
--
-- Built CONCURRENTLY, so outside a transaction (ADR 0003, amended 2026-12-07): a plain CREATE INDEX holds SHARE on its
-- table for the whole build, and every transaction that emits a domain event writes app.outbox; a concurrent build
-- lets the table's reads and writes go on, waiting only for the transactions already under way. A build that failed
-- or was killed leaves an INVALID index, which the runner drops and builds again on its next run.
--
-- The finder (`app.retention_due_tenants`) walks each table's tenants one "next tenant" read of these indexes apiece,
-- and reads each tenant's oldest row from them; the deletes read them oldest first. Each statement ends its line.

CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_deliveries_delivered ON app.webhook_deliveries (tenant_id, delivered_at)
    WHERE state = 'delivered';
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_published ON app.outbox (tenant_id, published_at)
    WHERE published_at IS NOT NULL;
