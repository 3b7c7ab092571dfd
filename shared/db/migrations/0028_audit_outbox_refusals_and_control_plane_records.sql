-- intent_ref: platform.audit
-- Two gaps of the audit outbox (migration 0027, ADR 0012).
--
-- A record the store refuses for good (a document it can never take, not an outage) stopped its tenant's relay at
-- that record every run, so every later record of the tenant waited behind it. Such a record is now set aside with
-- the store's answer (refused_at, refusal): kept, never retried, and out of the relay's way.
--
-- The control plane's records of its changes to tenants (create, change) were written after its transaction had
-- committed, in a transaction of the operator's tenant, so a crash or a store outage in between left a change without
-- its record. The control plane may now add, in its own transaction, records about tenants (resource type Tenant) to
-- any tenant's trail: to the Postgres store's table and to the outbox. It still reads no trail, and changes none.

-- A record without a transaction of the caller's goes through the outbox too now, and the erasure's own record,
-- written after the tenant's row is gone, must survive it: as app.audit_events (migration 0005), no foreign key.
ALTER TABLE app.audit_outbox DROP CONSTRAINT audit_outbox_tenant_id_fkey;

ALTER TABLE app.audit_outbox
    ADD COLUMN refused_at timestamptz,
    ADD COLUMN refusal text CHECK (pg_catalog.char_length(refusal) <= 2000),
    ADD CONSTRAINT audit_outbox_refusal_with_time CHECK ((refused_at IS NULL) = (refusal IS NULL));

-- The relay's order: the oldest first, among the records it may still copy.
DROP INDEX app.audit_outbox_queued;
CREATE INDEX audit_outbox_waiting ON app.audit_outbox (tenant_id, queued_at, id) WHERE refused_at IS NULL;

-- Setting a record aside is the only change the app may make to it.
GRANT UPDATE (refused_at, refusal) ON app.audit_outbox TO qp_runtime;

CREATE OR REPLACE FUNCTION app.audit_outbox_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    -- Oldest waiting record first, so a busy tenant cannot keep a quiet one's trail waiting; records set aside
    -- wait for nobody.
    SELECT o.tenant_id FROM app.audit_outbox o
     WHERE o.refused_at IS NULL
     GROUP BY o.tenant_id
     ORDER BY pg_catalog.min(o.queued_at)
     LIMIT max_tenants
$$;

GRANT INSERT ON app.audit_events TO qp_platform;
CREATE POLICY platform_tenant_records ON app.audit_events FOR INSERT TO qp_platform
    WITH CHECK (resource_type = 'Tenant');

GRANT INSERT ON app.audit_outbox TO qp_platform;
CREATE POLICY platform_tenant_records ON app.audit_outbox FOR INSERT TO qp_platform
    WITH CHECK (document ->> 'resourceType' = 'Tenant' AND refused_at IS NULL);
