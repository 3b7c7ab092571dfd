-- intent_ref: platform.events
-- Which tenants have a webhook delivery to send now: those with an enabled subscription whose head (its oldest
-- pending delivery; the ones behind it wait for it, ADR 0030) is due. The function counted every pending delivery,
-- so a tenant came back on every run, and first (oldest first), for deliveries no run sends: those of disabled
-- subscriptions (kept until the subscription is enabled again) and those waiting behind a head that backs off. With
-- `max_tenants` such tenants, every other tenant's deliveries waited for ever. It reads what it read before, plus
-- the subscriptions' `enabled`, through the owner's policies of migrations 0019 and 0031.

CREATE OR REPLACE FUNCTION app.webhook_due_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT heads.tenant_id FROM (
        SELECT DISTINCT ON (d.tenant_id, d.subscription_id) d.tenant_id, d.next_attempt_at
          FROM app.webhook_deliveries d
          JOIN app.webhook_subscriptions s ON s.tenant_id = d.tenant_id AND s.id = d.subscription_id AND s.enabled
         WHERE d.state = 'pending'
         ORDER BY d.tenant_id, d.subscription_id, d.id
    ) heads
     WHERE heads.next_attempt_at <= pg_catalog.clock_timestamp()
     GROUP BY heads.tenant_id
     ORDER BY pg_catalog.min(heads.next_attempt_at)
     LIMIT max_tenants
$$;
