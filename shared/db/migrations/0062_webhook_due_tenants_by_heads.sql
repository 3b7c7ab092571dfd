-- intent_ref: platform.events
-- The finder of tenants with a webhook delivery due reads one head per enabled subscription (ADR 0030, amended
-- 2026-12-07), as a tenant's claim does since the same day.
--
-- It took `DISTINCT ON (tenant, subscription)` over every pending delivery of every tenant, about once a second:
-- with one tenant's receivers slow and 60,000 deliveries pending, each call read and sorted all of them, on the
-- Postgres every tenant shares, and could reach the statement bound. Each enabled subscription's head is now found in
-- the pending index (`webhook_deliveries_pending`: tenant, subscription, id), written as a range on the subscription
-- so that only that index gives the order (with an equality the primary key's order fits too, and the planner may walk
-- a tenant's every delivery to find one head). Otherwise as 0050: the same tenants, in the same order.

CREATE OR REPLACE FUNCTION app.webhook_due_tenants(max_tenants integer, held_tenants uuid[] DEFAULT '{}')
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT heads.tenant_id FROM (
        SELECT s.tenant_id, head.next_attempt_at
          FROM app.webhook_subscriptions s
          CROSS JOIN LATERAL (
              SELECT p.next_attempt_at FROM app.webhook_deliveries p
               WHERE p.tenant_id = s.tenant_id AND p.subscription_id >= s.id AND p.subscription_id <= s.id
                 AND p.state = 'pending'
               ORDER BY p.subscription_id, p.id
               LIMIT 1
          ) head
         WHERE s.enabled
           AND s.tenant_id <> ALL (COALESCE(held_tenants, '{}'::uuid[]))
    ) heads
     WHERE heads.next_attempt_at <= pg_catalog.clock_timestamp()
     GROUP BY heads.tenant_id
     ORDER BY (SELECT pg_catalog.max(s.last_sent_at) FROM app.webhook_subscriptions s
                WHERE s.tenant_id = heads.tenant_id) NULLS FIRST,
              pg_catalog.min(heads.next_attempt_at)
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.webhook_due_tenants(integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.webhook_due_tenants(integer, uuid[]) TO qp_platform;
