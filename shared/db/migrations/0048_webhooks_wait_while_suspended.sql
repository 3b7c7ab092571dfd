-- intent_ref: platform.events
-- A suspended tenant's webhook deliveries wait (ADR 0030, ADR 0027, both amended 2026-12-06).
--
-- Suspending a tenant is how an operator contains it, yet its deliveries went on: neither the finder of tenants with a
-- delivery due (migration 0033) nor the sender looked at the tenant's status. The sender now claims no delivery of a
-- tenant that is not active (shared/events/webhook_store.py), and the finder leaves out the tenants its caller names:
-- the control plane, which reads the tenants table, passes the suspended ones. The function's owner reads no tenant
-- row (it has no policy on app.tenants), and a suspended tenant found first by age on every run would take a place of
-- `max_tenants` from tenants that have deliveries to send, as the disabled subscriptions' tenants did before 0033.
-- Their deliveries stay pending, attempts unchanged, and are due again once the tenant is active. Otherwise as 0033;
-- the one-argument call still works (no tenant left out).

DROP FUNCTION app.webhook_due_tenants(integer);

CREATE FUNCTION app.webhook_due_tenants(max_tenants integer, held_tenants uuid[] DEFAULT '{}')
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT heads.tenant_id FROM (
        SELECT DISTINCT ON (d.tenant_id, d.subscription_id) d.tenant_id, d.next_attempt_at
          FROM app.webhook_deliveries d
          JOIN app.webhook_subscriptions s ON s.tenant_id = d.tenant_id AND s.id = d.subscription_id AND s.enabled
         WHERE d.state = 'pending'
           AND d.tenant_id <> ALL (COALESCE(held_tenants, '{}'::uuid[]))
         ORDER BY d.tenant_id, d.subscription_id, d.id
    ) heads
     WHERE heads.next_attempt_at <= pg_catalog.clock_timestamp()
     GROUP BY heads.tenant_id
     ORDER BY pg_catalog.min(heads.next_attempt_at)
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.webhook_due_tenants(integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.webhook_due_tenants(integer, uuid[]) TO qp_platform;
