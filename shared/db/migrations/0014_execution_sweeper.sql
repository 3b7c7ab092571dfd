-- intent_ref: platform.execution
-- The stuck-execution sweeper: which tenants have executions that may be stuck (their ids and nothing else).
--
-- The sweeper reads and moves each tenant's executions in that tenant's own transaction (RLS as everywhere); only
-- the question "which tenants have a candidate" crosses tenants, and it is answered by a SECURITY DEFINER function
-- that returns tenant ids, never a row. FORCE ROW LEVEL SECURITY binds the table's owner too, so the function's
-- owner (the migrating role) gets a policy of its own: executions that have not ended, SELECT only. The app can
-- never become that role (ADR 0002), so the policy widens nothing the app can reach.

DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY sweeper_stuck_tenants ON app.executions FOR SELECT TO %I'
        ' USING (status IN (''pending'', ''running'', ''waiting'', ''compensating''))',
        current_user);
END
$$;

-- Candidates: a pending top-level execution whose start claim is older than `stale_start_s` (its starter died
-- between recording it and starting its orchestration; a child is started by its parent's orchestration), or an
-- execution that has not ended and whose status has not changed for `quiet_s` (its orchestration may have ended
-- without recording it). The seconds come from the sweeper, which applies the same rules in the tenant's
-- transaction; the claim itself is taken there, by the start path's conditional update.
CREATE FUNCTION app.execution_sweep_tenants(stale_start_s double precision, quiet_s double precision,
                                            max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT e.tenant_id FROM app.executions e
     WHERE (e.status = 'pending' AND e.parent_execution_id IS NULL
            AND (e.start_claimed_at IS NULL OR e.start_claimed_at
                 < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => stale_start_s)))
        OR (e.status IN ('running', 'waiting', 'compensating')
            AND e.updated_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => quiet_s))
     GROUP BY e.tenant_id
     -- Stalled starts first (they are certainly stuck); the rest in random order, so that tenants whose executions
     -- legitimately wait for days cannot keep the others out of a capped run forever.
     ORDER BY pg_catalog.bool_or(e.status = 'pending') DESC, pg_catalog.random()
     LIMIT max_tenants
$$;

REVOKE ALL ON FUNCTION app.execution_sweep_tenants(double precision, double precision, integer) FROM PUBLIC;
-- The control-plane role already sees every tenant's id (app.tenants) and no tenant's data; the runtime role,
-- which serves tenant requests, learns nothing about other tenants from it.
GRANT EXECUTE ON FUNCTION app.execution_sweep_tenants(double precision, double precision, integer) TO qp_platform;
