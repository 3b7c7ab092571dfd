-- intent_ref: platform.events
-- Webhooks (ADR 0030): a Tenant.Admin subscribes a URL to domain event types; the outbox relay writes one delivery
-- per matching subscription in the transaction that marks the event published (so none is lost), and a timer sends
-- them, oldest first per subscription, signed as Standard Webhooks, retried with backoff. Both tables are tenant
-- tables under RLS like every other.

CREATE TABLE app.webhook_subscriptions (
    tenant_id            uuid NOT NULL REFERENCES app.tenants (id),
    id                   uuid NOT NULL,
    url                  text NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
    event_types          text[] NOT NULL CHECK (cardinality(event_types) BETWEEN 1 AND 50),
    description          text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    -- `whsec_` + base64 of 32 random bytes; shown once when created or rotated, never read back by the API.
    secret               text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    enabled              boolean NOT NULL DEFAULT true,
    disabled_reason      text,
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    created_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE app.webhook_deliveries (
    tenant_id        uuid NOT NULL,
    id               bigint GENERATED ALWAYS AS IDENTITY,
    subscription_id  uuid NOT NULL,
    message_id       text NOT NULL,          -- the outbox event's id: the same on every attempt (webhook-id)
    event_type       text NOT NULL,
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at     timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, subscription_id, message_id),
    FOREIGN KEY (tenant_id, subscription_id) REFERENCES app.webhook_subscriptions (tenant_id, id)
);
CREATE INDEX webhook_deliveries_pending ON app.webhook_deliveries (tenant_id, subscription_id, id)
    WHERE state = 'pending';

SELECT app.enable_tenant_isolation('app.webhook_subscriptions');
SELECT app.enable_tenant_isolation('app.webhook_deliveries');
GRANT SELECT, INSERT, UPDATE, DELETE ON app.webhook_subscriptions, app.webhook_deliveries TO qp_runtime;
GRANT DELETE ON app.webhook_subscriptions, app.webhook_deliveries TO qp_platform;
CREATE POLICY platform_erase ON app.webhook_subscriptions FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY platform_erase ON app.webhook_deliveries FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));

-- Which tenants have a delivery due (their ids, nothing else), for the delivery timer; as migrations 0013/0014, the
-- function's owner gets a SELECT policy of its own on pending deliveries, which the app can never use (ADR 0002).
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY webhook_due_tenants ON app.webhook_deliveries FOR SELECT TO %I USING (state = ''pending'')',
        current_user);
END
$$;

CREATE FUNCTION app.webhook_due_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT d.tenant_id FROM app.webhook_deliveries d
     WHERE d.state = 'pending' AND d.next_attempt_at <= pg_catalog.clock_timestamp()
     GROUP BY d.tenant_id
     ORDER BY pg_catalog.min(d.next_attempt_at)
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.webhook_due_tenants(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.webhook_due_tenants(integer) TO qp_platform;
