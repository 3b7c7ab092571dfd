-- intent_ref: platform.execution
-- Executions of intents and the numbered event stream of each (DESIGN.md §7).

CREATE TABLE app.executions (
    tenant_id        uuid NOT NULL REFERENCES app.tenants (id),
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    intent_id        uuid NOT NULL,
    intent_version   integer NOT NULL CHECK (intent_version >= 1),
    target           text NOT NULL DEFAULT '' CHECK (length(target) <= 128),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'waiting', 'succeeded', 'failed', 'compensating',
                                       'cancelled')),
    input            jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(input) = 'object'),
    output           jsonb,
    error            text,
    requested_by     text NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 256),
    idempotency_key  text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    plan_hash        text,
    -- The seq of the newest event: appending increments it under the row lock, so numbers are gap-free.
    last_event_seq   bigint NOT NULL DEFAULT 0 CHECK (last_event_seq >= 0),
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at      timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, intent_id) REFERENCES app.intents (tenant_id, id),
    -- The pinned version must exist (versions are immutable, so it always will).
    FOREIGN KEY (tenant_id, intent_id, intent_version) REFERENCES app.intent_versions (tenant_id, intent_id, version),
    -- NULLs are distinct: only keyed requests are deduplicated; a concurrent duplicate loses here.
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX executions_tenant_status_created ON app.executions (tenant_id, status, created_at);
-- The listing's order (newest first) with and without the intent filter.
CREATE INDEX executions_tenant_created ON app.executions (tenant_id, created_at DESC, id DESC);
CREATE INDEX executions_tenant_intent_created ON app.executions (tenant_id, intent_id, created_at DESC, id DESC);

CREATE TABLE app.execution_events (
    tenant_id     uuid NOT NULL,
    execution_id  uuid NOT NULL,
    seq           bigint NOT NULL CHECK (seq >= 1),
    type          text NOT NULL CHECK (type ~ '^[a-z]+(\.[a-z_]+)+$'),
    step_id       text CHECK (length(step_id) BETWEEN 1 AND 128),
    data          jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(data) = 'object'),
    occurred_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, execution_id, seq),
    FOREIGN KEY (tenant_id, execution_id) REFERENCES app.executions (tenant_id, id)
);

SELECT app.enable_tenant_isolation('app.executions');
SELECT app.enable_tenant_isolation('app.execution_events');

-- Only the mutable columns: what was requested (intent, version, input, requester, key) never changes.
GRANT SELECT, INSERT ON app.executions TO qp_runtime;
GRANT UPDATE (status, output, error, last_event_seq, updated_at, finished_at) ON app.executions TO qp_runtime;
-- Events are append-only.
GRANT SELECT, INSERT ON app.execution_events TO qp_runtime;

GRANT DELETE ON app.executions, app.execution_events TO qp_platform;
CREATE POLICY platform_erase ON app.executions FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY platform_erase ON app.execution_events FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));

-- Long polls wake at once: the notification is delivered when the inserting transaction commits (never for a
-- rolled-back event), and carries only ids, which mean nothing outside the tenant.
CREATE FUNCTION app.notify_execution_event() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('execution_events', NEW.tenant_id::text || ':' || NEW.execution_id::text);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION app.notify_execution_event() FROM PUBLIC;
CREATE TRIGGER execution_events_notify AFTER INSERT ON app.execution_events
    FOR EACH ROW EXECUTE FUNCTION app.notify_execution_event();
