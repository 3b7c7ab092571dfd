-- intent_ref: platform.execution
-- Admission into the engine (ADR 0041): a tenant's top-level executions past its starting share are recorded
-- `pending` and queued, and let in oldest first as the tenant's earlier ones get under way. Queued rows are not
-- stalled starts: neither the start path's takeover nor the sweeper starts them (nothing claimed them), admission
-- does, with a claim that makes them ordinary starts from then on.

ALTER TABLE app.executions ADD COLUMN queued boolean NOT NULL DEFAULT false;
GRANT UPDATE (queued) ON app.executions TO qp_runtime;

-- Admission reads a tenant's queue oldest first; the finder below reads every tenant's.
CREATE INDEX executions_queued ON app.executions (tenant_id, created_at, id) WHERE queued AND status = 'pending';

-- Which tenants have a queued execution, those waiting longest first (ids only, as the sweeper's finder). It reads
-- executions that have not ended, through the owner's policy of migration 0014.
CREATE FUNCTION app.execution_queued_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT e.tenant_id FROM app.executions e
     WHERE e.queued AND e.status = 'pending'
     GROUP BY e.tenant_id
     ORDER BY pg_catalog.min(e.created_at)
     LIMIT max_tenants
$$;

REVOKE ALL ON FUNCTION app.execution_queued_tenants(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.execution_queued_tenants(integer) TO qp_platform;

-- The sweeper's finder, as migration 0014 wrote it, but a queued execution is no stalled start.
CREATE OR REPLACE FUNCTION app.execution_sweep_tenants(stale_start_s double precision, quiet_s double precision,
                                                       max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT e.tenant_id FROM app.executions e
     WHERE (e.status = 'pending' AND e.parent_execution_id IS NULL AND NOT e.queued
            AND (e.start_claimed_at IS NULL OR e.start_claimed_at
                 < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => stale_start_s)))
        OR (e.status IN ('running', 'waiting', 'compensating')
            AND e.updated_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => quiet_s))
     GROUP BY e.tenant_id
     ORDER BY pg_catalog.bool_or(e.status = 'pending') DESC, pg_catalog.random()
     LIMIT max_tenants
$$;
