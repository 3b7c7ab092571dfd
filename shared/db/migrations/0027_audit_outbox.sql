-- intent_ref: platform.audit
-- The audit outbox: where the audit store cannot join the caller's transaction (Cosmos DB, the deployed backend),
-- a record of that transaction is queued here, in it, and copied to the store once it has committed. So a record
-- exists exactly when its change does, and an outage of the store delays the trail instead of failing every request
-- (ADR 0012). The copy right after the commit takes what its transaction queued; the relay timer takes what is left
-- (a copy that failed, a process that died in between). The store refuses a second copy of a record by its id.

CREATE TABLE app.audit_outbox (
    tenant_id  uuid NOT NULL REFERENCES app.tenants (id),
    id         uuid NOT NULL,
    -- The store's document, as it will be written (without its retention, which is read when it is written).
    document   jsonb NOT NULL CHECK (jsonb_typeof(document) = 'object'),
    queued_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, id)
);
-- The relay's order: the oldest first.
CREATE INDEX audit_outbox_queued ON app.audit_outbox (tenant_id, queued_at, id);

SELECT app.enable_tenant_isolation('app.audit_outbox');
-- DELETE: a record leaves once the store holds it. The trail itself stays append-only (audit_events, the store).
GRANT SELECT, INSERT, DELETE ON app.audit_outbox TO qp_runtime;

GRANT DELETE ON app.audit_outbox TO qp_platform;
CREATE POLICY platform_erase ON app.audit_outbox FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));

-- Which tenants have records waiting, for the relay (as migration 0013 for the event outbox): ids only, through an
-- owner function; the owner's policy is SELECT only, and the app can never become the owner (ADR 0002).
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY audit_relay_tenants ON app.audit_outbox FOR SELECT TO %I USING (true)', current_user);
END
$$;

CREATE FUNCTION app.audit_outbox_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    -- Oldest waiting record first, so a busy tenant cannot keep a quiet one's trail waiting.
    SELECT o.tenant_id FROM app.audit_outbox o
     GROUP BY o.tenant_id
     ORDER BY pg_catalog.min(o.queued_at)
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.audit_outbox_tenants(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.audit_outbox_tenants(integer) TO qp_platform;
