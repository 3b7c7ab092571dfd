-- intent_ref: platform.events
-- The tenants whose last relay publish failed for a reason of their own, and when the relay may try them again
-- (ADR 0026, amended 2026-12-06, seventh).
--
-- The relay kept them in a dict of its process and tried each of them once in every run, after the other tenants:
-- a partition that did not answer cost every run a publish's deadline (120 s), and the timer's next run, with every
-- other tenant's new events and webhooks, waited for it as long as that partition stayed stuck; a restart forgot the
-- deferral, and each instance kept its own. Now a failure is recorded here with a backoff (30 s, doubling with each
-- consecutive failure, at most 15 minutes) on the database's clock, which every instance shares; a tenant is not
-- relayed before its `retry_at`, and a publish of its events that goes clears it. A control-plane table: no tenant is
-- pinned, and no tenant role reaches the schema.

CREATE TABLE control.relay_deferrals (
    -- An erased tenant's record goes with its row.
    tenant_id  uuid PRIMARY KEY REFERENCES app.tenants (id) ON DELETE CASCADE,
    -- Consecutive failures since the last publish that went: the backoff doubles with each.
    failures   integer NOT NULL CHECK (failures >= 1),
    -- The last failure: among the tenants due again, the least recently failed go first (after every other tenant).
    failed_at  timestamptz NOT NULL,
    -- Not relayed before this.
    retry_at   timestamptz NOT NULL,
    CHECK (retry_at >= failed_at)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON control.relay_deferrals TO qp_platform;

-- The relay's turns: the tenants with events waiting, but for those still backing off, oldest waiting first, limited
-- before anything else is ordered (so tenants backing off never fill the limit); then those whose last publish failed
-- after the others, least recently failed first. Tenant ids and whether each was deferred, never a row, as
-- app.outbox_pending_tenants (migration 0013), whose policy for this owner it reads through.
CREATE FUNCTION app.outbox_relay_turns(max_tenants integer) RETURNS TABLE (tenant_id uuid, deferred boolean)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT waiting.tenant_id, d.tenant_id IS NOT NULL
      FROM (SELECT o.tenant_id, pg_catalog.min(o.position) AS first_position
              FROM app.outbox o
             WHERE o.published_at IS NULL
             GROUP BY o.tenant_id
            HAVING NOT EXISTS (SELECT FROM control.relay_deferrals b
                                WHERE b.tenant_id = o.tenant_id AND b.retry_at > pg_catalog.now())
             ORDER BY first_position
             LIMIT max_tenants) AS waiting
      LEFT JOIN control.relay_deferrals d ON d.tenant_id = waiting.tenant_id
     ORDER BY d.failed_at NULLS FIRST, waiting.first_position
$$;

REVOKE ALL ON FUNCTION app.outbox_relay_turns(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.outbox_relay_turns(integer) TO qp_platform;
