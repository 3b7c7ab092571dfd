-- intent_ref: platform.audit
-- The audit trail: one append-only row per mutation and per authorization decision, isolated per tenant.

CREATE TABLE app.audit_events (
    -- No foreign key to app.tenants: erasing a tenant removes its row, yet the erasure's own audit
    -- record must survive it.
    tenant_id      uuid NOT NULL,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    occurred_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- '<tid>/<oid>' of the Entra principal (or a named platform actor such as a timer).
    principal_id   text NOT NULL CHECK (length(principal_id) BETWEEN 1 AND 256),
    action         text NOT NULL CHECK (length(action) BETWEEN 1 AND 128),
    resource_type  text NOT NULL CHECK (length(resource_type) BETWEEN 1 AND 128),
    resource_id    text CHECK (length(resource_id) <= 256),
    decision       text NOT NULL CHECK (decision IN ('allow', 'deny')),
    reason         text NOT NULL DEFAULT '' CHECK (length(reason) <= 1024),
    request_id     text CHECK (length(request_id) <= 128),
    detail         jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(detail) = 'object'),
    PRIMARY KEY (tenant_id, id)
);

-- Serves the only read path: one tenant's events, newest first, keyset-paginated on (occurred_at, id).
-- Both columns descending so the index order is exactly the page order.
CREATE INDEX audit_events_tenant_time ON app.audit_events (tenant_id, occurred_at DESC, id DESC);

SELECT app.enable_tenant_isolation('app.audit_events');

-- Append-only: the runtime role may add and read records, never change or remove them.
GRANT SELECT, INSERT ON app.audit_events TO qp_runtime;
