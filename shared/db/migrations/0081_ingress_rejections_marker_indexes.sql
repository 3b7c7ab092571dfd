-- intent_ref: platform.ingress
-- migrate: no-transaction
-- The indexes of a tenant's full rejections and of its markers (migration 0079, ADR 0019 amended 2026-12-08).
--
-- Built CONCURRENTLY, so outside a transaction (ADR 0003, amended 2026-12-07): migration 0079 built them in its own
-- transaction, under the ACCESS EXCLUSIVE lock its ALTER TABLE takes, and every read of the table (an ingress start
-- reads it while it holds its tenant's start lock, and the listing) waited for the builds or failed on its lock
-- timeout. A concurrent build lets the table's reads and writes go on, waiting only for the transactions under way.
--
-- The counts and the ranking of the trim read the tenant's full rows by principal; the listing reads them newest
-- first; the markers' expiry and their count read the markers oldest and newest first; a sender's markers' bound
-- reads them by group, newest first. No query of this release or
-- of the one it replaces reads rows by principal across markers: the index of migration 0063 (every row, markers too,
-- each with its principal) goes. The listing's index of migration 0015 stays while the release it replaces lists
-- with it (it does not leave markers out); a later migration drops it once none does. Each statement ends its line.

CREATE INDEX CONCURRENTLY IF NOT EXISTS ingress_rejections_tenant_principal_full
    ON app.ingress_rejections (tenant_id, requested_by, created_at DESC, id DESC) WHERE NOT trimmed;
CREATE INDEX CONCURRENTLY IF NOT EXISTS ingress_rejections_tenant_listed
    ON app.ingress_rejections (tenant_id, created_at DESC, id DESC) WHERE NOT trimmed;
CREATE INDEX CONCURRENTLY IF NOT EXISTS ingress_rejections_tenant_markers
    ON app.ingress_rejections (tenant_id, created_at DESC, id DESC) WHERE trimmed;
CREATE INDEX CONCURRENTLY IF NOT EXISTS ingress_rejections_tenant_marker_groups
    ON app.ingress_rejections (tenant_id, marker_group, created_at DESC, id DESC) WHERE trimmed;
DROP INDEX CONCURRENTLY IF EXISTS app.ingress_rejections_tenant_principal_created;
