-- intent_ref: platform.execution
-- A suspended tenant's stalled starts no longer rank it first in the sweeper's list (ADR 0014, amended 2026-12-07).
--
-- The sweeper leaves a suspended tenant's stalled start pending, to be started once the tenant is active again (ADR
-- 0027); but the finder ranked every tenant with a stalled start first, so such a tenant stayed at the head of every
-- run's list, and a hundred of them would have kept every other tenant out of the capped list. As migration 0048 did
-- for webhooks, the finder leaves out the stalled starts of the tenants its caller names: the control plane, which
-- reads the tenants table, passes those not active (the function's owner reads no tenant row). Their quiet running
-- executions are still found, in their turn. Otherwise as 0043; the three-argument call still works (none held).

DROP FUNCTION app.execution_sweep_tenants(double precision, double precision, integer);

CREATE FUNCTION app.execution_sweep_tenants(stale_start_s double precision, quiet_s double precision,
                                            max_tenants integer, held_tenants uuid[] DEFAULT '{}')
    RETURNS SETOF uuid
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
                AND e.tenant_id <> ALL (COALESCE(held_tenants, '{}'::uuid[]))
                AND (e.start_claimed_at IS NULL OR e.start_claimed_at
                     < pg_catalog.clock_timestamp()
                       - pg_catalog.make_interval(secs => LEAST(GREATEST(stale_start_s, 60), 86400))))
            OR (e.status IN ('running', 'waiting', 'compensating')
                AND e.updated_at < pg_catalog.clock_timestamp()
                                   - pg_catalog.make_interval(secs => LEAST(GREATEST(quiet_s, 300), 86400)))
         GROUP BY e.tenant_id
    ) AS found
     ORDER BY found.stalled DESC, found.unchecked DESC, found.oldest_check ASC NULLS LAST, pg_catalog.random()
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.execution_sweep_tenants(double precision, double precision, integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.execution_sweep_tenants(double precision, double precision, integer, uuid[])
    TO qp_platform;
