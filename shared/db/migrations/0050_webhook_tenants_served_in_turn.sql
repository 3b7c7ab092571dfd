-- intent_ref: platform.events
-- Tenants with a webhook delivery due are served in turn (ADR 0030, amended 2026-12-06).
--
-- A run serves the tenants the finder returns in its order until its deadline; those it did not start wait for the
-- next run, which found them in the same order: oldest due head first. A receiver that answers slowly, but answers,
-- keeps a backlog whose heads are as old as their events, so tenants with such receivers came first on every run,
-- and a tenant with one delivery due behind enough of them was not served while their backlogs lasted (10 slow
-- tenants with 30 deliveries each: the 28th run, not the first). The finder now returns the tenants least recently
-- sent for first: by the last attempt recorded to any of the tenant's subscriptions (`last_sent_at`, migration 0049),
-- never sent for before all, then oldest due as before. A tenant a run did not reach is older than every tenant it
-- served, and comes before them in the next. It reads what it read before (the subscriptions through the owner's
-- policy of migration 0031). Otherwise as 0048.

CREATE OR REPLACE FUNCTION app.webhook_due_tenants(max_tenants integer, held_tenants uuid[] DEFAULT '{}')
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
     ORDER BY (SELECT pg_catalog.max(s.last_sent_at) FROM app.webhook_subscriptions s
                WHERE s.tenant_id = heads.tenant_id) NULLS FIRST,
              pg_catalog.min(heads.next_attempt_at)
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.webhook_due_tenants(integer, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.webhook_due_tenants(integer, uuid[]) TO qp_platform;
