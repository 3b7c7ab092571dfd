-- intent_ref: platform.ingress
-- Requests from the intent-requests hub that could not start anything, kept for the sending tenant to read
-- (an event cannot be answered, so this is its answer). Never the token: only what the tenant may see again.

CREATE TABLE app.ingress_rejections (
    tenant_id        uuid NOT NULL REFERENCES app.tenants (id),
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    hub              text NOT NULL CHECK (length(hub) BETWEEN 1 AND 256),
    partition_id     text NOT NULL CHECK (length(partition_id) BETWEEN 1 AND 64),
    sequence_number  bigint NOT NULL CHECK (sequence_number >= 0),
    enqueued_time    timestamptz,
    reason           text NOT NULL CHECK (reason ~ '^[a-z_]{1,64}$'),
    -- A problem+json object (type, title, status, detail and its extensions).
    detail           jsonb NOT NULL CHECK (jsonb_typeof(detail) = 'object'),
    requested_by     text CHECK (length(requested_by) BETWEEN 1 AND 256),
    idempotency_key  text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, id),
    -- A redelivered event is recorded once.
    UNIQUE (tenant_id, hub, partition_id, sequence_number)
);
-- The listing's order (newest first).
CREATE INDEX ingress_rejections_tenant_created ON app.ingress_rejections (tenant_id, created_at DESC, id DESC);

SELECT app.enable_tenant_isolation('app.ingress_rejections');

-- Append-only for the app: a rejection is a record of what happened.
GRANT SELECT, INSERT ON app.ingress_rejections TO qp_runtime;

GRANT DELETE ON app.ingress_rejections TO qp_platform;
CREATE POLICY platform_erase ON app.ingress_rejections FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
