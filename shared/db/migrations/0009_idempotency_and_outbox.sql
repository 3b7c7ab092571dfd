-- intent_ref: platform.idempotency
-- Idempotency keys of create/start requests, and the transactional outbox of domain events.

-- One row per (tenant, key): inserted in the same transaction as the work it guards, so a concurrent duplicate
-- waits on the row and then replays the stored response; the work happens exactly once.
CREATE TABLE app.idempotency_keys (
    tenant_id        uuid NOT NULL REFERENCES app.tenants (id),
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- What the key was first used for: method, route and a digest of the body.
    fingerprint      text NOT NULL,
    response_status  integer,
    response_body    jsonb,
    response_headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (tenant_id, key)
);
SELECT app.enable_tenant_isolation('app.idempotency_keys');
GRANT SELECT, INSERT, UPDATE, DELETE ON app.idempotency_keys TO qp_runtime;
GRANT DELETE ON app.idempotency_keys TO qp_platform;
CREATE POLICY platform_erase ON app.idempotency_keys FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));

-- Domain events written in the same transaction as the change they describe; a relay publishes them to
-- Event Hubs (platform-events) at least once, and consumers dedupe by id.
CREATE TABLE app.outbox (
    tenant_id     uuid NOT NULL REFERENCES app.tenants (id),
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    position      bigint GENERATED ALWAYS AS IDENTITY,
    event_type    text NOT NULL CHECK (event_type ~ '^[a-z]+(\.[a-z_]+)+$'),
    subject       text NOT NULL,
    data          jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object'),
    occurred_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX outbox_unpublished ON app.outbox (position) WHERE published_at IS NULL;
SELECT app.enable_tenant_isolation('app.outbox');
GRANT SELECT, INSERT ON app.outbox TO qp_runtime;
GRANT DELETE ON app.outbox TO qp_platform;
CREATE POLICY platform_erase ON app.outbox FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
