-- intent_ref: platform.events
-- The outbox relay: which tenants have events waiting (their ids and nothing else), and marking events published.
--
-- The relay reads and marks each tenant's events in that tenant's own transaction (RLS as everywhere); only the
-- question "which tenants have something to publish" crosses tenants, and it is answered by a SECURITY DEFINER
-- function that returns tenant ids, never a row. FORCE ROW LEVEL SECURITY binds the table's owner too, so the
-- function's owner (the migrating role) gets a policy of its own: unpublished rows, SELECT only. The app can never
-- become that role (ADR 0002), so the policy widens nothing the app can reach.

DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY relay_pending_tenants ON app.outbox FOR SELECT TO %I USING (published_at IS NULL)',
        current_user);
END
$$;

CREATE FUNCTION app.outbox_pending_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    -- Oldest waiting event first, so a busy tenant cannot keep a quiet one waiting.
    SELECT o.tenant_id FROM app.outbox o
     WHERE o.published_at IS NULL
     GROUP BY o.tenant_id
     ORDER BY pg_catalog.min(o.position)
     LIMIT max_tenants
$$;

REVOKE ALL ON FUNCTION app.outbox_pending_tenants(integer) FROM PUBLIC;
-- The control-plane role already sees every tenant's id (app.tenants) and no tenant's data; the runtime role,
-- which serves tenant requests, learns nothing about other tenants from it.
GRANT EXECUTE ON FUNCTION app.outbox_pending_tenants(integer) TO qp_platform;

-- Publish-then-mark, in the tenant's transaction (SELECT ... FOR UPDATE needs an UPDATE privilege too).
GRANT UPDATE (published_at) ON app.outbox TO qp_runtime;
