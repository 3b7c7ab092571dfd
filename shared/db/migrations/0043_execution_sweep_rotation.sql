-- intent_ref: platform.execution
-- The stuck-execution sweeper picked a tenant's quiet executions at random, 20 a run, with no memory of which it had
-- checked, and the tenants past stalled starts at random too: behind N executions that legitimately wait (approvals,
-- 30-day waits) one whose orchestration is gone was found after N/20 runs on average and by chance (4,000 waits:
-- hours; 100,000: days), holding its quota slot all that time. Each execution now remembers when the sweeper last
-- asked its orchestration (`swept_at`); a tenant's quiet executions are taken least recently checked first (never
-- checked first), and the tenants in the order of their least recently checked candidate, so every quiet execution
-- is checked once before any is checked twice (ADR 0014, amended 2026-12-06).

-- Nullable, no default: adding it rewrites nothing. Only the sweeper writes it; `updated_at` (the quiet criterion)
-- is not touched by it.
ALTER TABLE app.executions ADD COLUMN swept_at timestamptz;
GRANT UPDATE (swept_at) ON app.executions TO qp_runtime;

-- The quiet query's order within a tenant (the RLS predicate), read in index order and stopped after the limit
-- instead of sorting every unfinished execution of the tenant.
CREATE INDEX executions_tenant_sweep_order ON app.executions (tenant_id, swept_at NULLS FIRST, updated_at)
    WHERE status IN ('running', 'waiting', 'compensating');

-- As in migration 0039, but past stalled starts the tenants come in the order of their least recently checked quiet
-- execution (one never checked first), random only among equals: a run sweeps about ten tenants of a capped hundred,
-- and at random a tenant with a dead execution was reached only by chance.
CREATE OR REPLACE FUNCTION app.execution_sweep_tenants(stale_start_s double precision, quiet_s double precision,
                                                       max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT found.tenant_id FROM (
        SELECT e.tenant_id,
               pg_catalog.bool_or(e.status = 'pending') AS stalled,
               pg_catalog.bool_or(e.status <> 'pending' AND e.swept_at IS NULL) AS unchecked,
               pg_catalog.min(e.swept_at) FILTER (WHERE e.status <> 'pending') AS oldest_check
          FROM app.executions e
         WHERE (e.status = 'pending' AND e.parent_execution_id IS NULL
                AND (e.start_claimed_at IS NULL OR e.start_claimed_at
                     < pg_catalog.clock_timestamp()
                       - pg_catalog.make_interval(secs => LEAST(GREATEST(stale_start_s, 60), 86400))))
            OR (e.status IN ('running', 'waiting', 'compensating')
                AND e.updated_at < pg_catalog.clock_timestamp()
                                   - pg_catalog.make_interval(secs => LEAST(GREATEST(quiet_s, 300), 86400)))
         GROUP BY e.tenant_id
    ) AS found
     -- Stalled starts first (they are certainly stuck); then a tenant with a quiet execution never checked, then the
     -- one whose check is the oldest; random among equals, so no tenant's id decides.
     ORDER BY found.stalled DESC, found.unchecked DESC, found.oldest_check ASC NULLS LAST, pg_catalog.random()
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.execution_sweep_tenants(double precision, double precision, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.execution_sweep_tenants(double precision, double precision, integer) TO qp_platform;
