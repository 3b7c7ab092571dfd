-- intent_ref: platform.execution
-- Two costs of the work queue that grew without bound (ADR 0027, amended 2026-12-06).
--
-- An item is open while its attempt is `dispatched`, and items and attempts are kept after they end. Every lease call,
-- every re-check of a waiting lease and the sweeper's finder look for open leases that ran out by joining the items
-- to their attempts on `state = 'dispatched'`, and nothing indexed that: each of those statements read every
-- tenant's whole attempt history (hundreds of milliseconds at 500 000 rows, on the server every tenant shares). The
-- open attempts are few (a tenant's live work) and stay few however long the history: this index holds only them,
-- so the statements read the caller's open attempts (the sweeper's finder: all tenants' open attempts) and look their
-- items up by key. An attempt leaves the index when it ends, the one write that ends it anyway. Built in the
-- migration's transaction: writes to step_attempts wait for one read of the table.
CREATE INDEX step_attempts_dispatched ON app.step_attempts (tenant_id, execution_id, step_id, phase, attempt)
    WHERE state = 'dispatched';

-- The sweeper's finder (migration 0018) answers the same as before. The planner guesses that a third of all leased
-- items ran out (clock_timestamp() is volatile), and with that index it still preferred reading every leased item
-- ever; each open attempt's item is now looked up by its key (a LATERAL with LIMIT is never turned into a join). The
-- lease call's own statement (work_queue._EXPIRED) has the same shape, for the same reason.
CREATE OR REPLACE FUNCTION app.work_expired_lease_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT DISTINCT a.tenant_id FROM app.step_attempts a
     CROSS JOIN LATERAL (
        SELECT 1 FROM app.work_items w
         WHERE w.tenant_id = a.tenant_id AND w.execution_id = a.execution_id AND w.step_id = a.step_id
           AND w.phase = a.phase AND w.attempt = a.attempt
           AND w.lease_id IS NOT NULL AND w.lease_expires_at < pg_catalog.clock_timestamp()
         LIMIT 1) AS expired
     WHERE a.state = 'dispatched'
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.work_expired_lease_tenants(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.work_expired_lease_tenants(integer) TO qp_platform;

-- A lease call recorded a poller row for every action name it was asked for, any string, and nothing removed them:
-- one tenant could grow this shared table by a megabyte a minute. The lease now records only actions the tenant can
-- have remote work for (a registered module, or an action with a queued item), and when a poll adds a row the
-- tenant's rows that no poll has renewed for the given age go, unless their action is still registered. The app
-- stays without DELETE on the table (which would also let it LOCK the table in any mode): it calls this function in
-- its tenant's transaction, which trims that tenant's rows by that rule and nothing else. FORCE ROW LEVEL SECURITY
-- binds the function's owner (the migrating role) too, so it gets policies of its own, bound to the pinned tenant
-- as the app's are; the app can never become that role (ADR 0002). Needs no UPDATE grant: it adds no column.
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY trim_pinned_tenant_read ON app.work_pollers FOR SELECT TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY trim_pinned_tenant ON app.work_pollers FOR DELETE TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY trim_pollers_pinned_tenant_read ON app.modules FOR SELECT TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
END
$$;

CREATE FUNCTION app.trim_work_pollers(max_age interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    tenant uuid := app.current_tenant_id();
    removed bigint;
BEGIN
    IF tenant IS NULL THEN
        RETURN 0;  -- no tenant pinned: nothing is anyone's to trim
    END IF;
    -- A caller cannot take a row that a worker renewed within the last day.
    max_age := GREATEST(max_age, interval '1 day');
    DELETE FROM app.work_pollers p
     WHERE p.tenant_id = tenant
       AND p.last_polled_at < pg_catalog.clock_timestamp() - max_age
       AND NOT EXISTS (SELECT 1 FROM app.modules m WHERE m.tenant_id = tenant AND m.action = p.action);
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

REVOKE ALL ON FUNCTION app.trim_work_pollers(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.trim_work_pollers(interval) TO qp_runtime;
