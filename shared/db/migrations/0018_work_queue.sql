-- intent_ref: platform.execution
-- Remote work goes to a tenant's own queue, not to the shared `module-work` hub (ADR 0027). A remote step's attempt
-- becomes one row here, under RLS like every tenant table, so the only way to see or take it is the worker API
-- with the tenant's own token. Whether the item is still open is the attempt's state (`dispatched` = no result
-- yet): an attempt that ends any other way (timed out, cancelled, abandoned) leaves the queue with no second
-- write. A lease is a fresh id per leasing; the task token handed out with it carries that id as its nonce, so a
-- token of an expired or earlier lease can never record a result.

CREATE TABLE app.work_items (
    tenant_id        uuid NOT NULL,
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    execution_id     uuid NOT NULL,
    step_id          text NOT NULL,
    phase            text NOT NULL CHECK (phase IN ('run', 'compensate')),
    attempt          integer NOT NULL CHECK (attempt >= 1),
    action           text NOT NULL CHECK (length(action) BETWEEN 1 AND 128),
    params           jsonb NOT NULL,
    enqueued_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The attempt's own deadline (its step timeout): a token never outlives it.
    deadline         timestamptz NOT NULL,
    lease_id         uuid,
    leased_by        text CHECK (length(leased_by) BETWEEN 1 AND 300),
    leased_at        timestamptz,
    lease_expires_at timestamptz,
    heartbeat_at     timestamptz,
    progress         jsonb,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, execution_id, step_id, phase, attempt),
    FOREIGN KEY (tenant_id, execution_id, step_id, phase, attempt)
        REFERENCES app.step_attempts (tenant_id, execution_id, step_id, phase, attempt)
);
-- The lease query: a tenant's unleased items of some actions, oldest first.
CREATE INDEX work_items_queued ON app.work_items (tenant_id, action, enqueued_at) WHERE lease_id IS NULL;
CREATE INDEX work_items_leased ON app.work_items (lease_expires_at) WHERE lease_id IS NOT NULL;
CREATE UNIQUE INDEX work_items_lease ON app.work_items (lease_id) WHERE lease_id IS NOT NULL;

SELECT app.enable_tenant_isolation('app.work_items');
GRANT SELECT, INSERT ON app.work_items TO qp_runtime;
GRANT UPDATE (lease_id, leased_by, leased_at, lease_expires_at, heartbeat_at, progress) ON app.work_items
    TO qp_runtime;
GRANT DELETE ON app.work_items TO qp_platform;
CREATE POLICY platform_erase ON app.work_items FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));

-- When a worker of the tenant last asked for an action: the wait reason says "no worker has polled in 5 min".
CREATE TABLE app.work_pollers (
    tenant_id      uuid NOT NULL,
    action         text NOT NULL CHECK (length(action) BETWEEN 1 AND 128),
    last_polled_at timestamptz NOT NULL,
    last_polled_by text NOT NULL CHECK (length(last_polled_by) BETWEEN 1 AND 300),
    PRIMARY KEY (tenant_id, action)
);
SELECT app.enable_tenant_isolation('app.work_pollers');
GRANT SELECT, INSERT, UPDATE ON app.work_pollers TO qp_runtime;
GRANT DELETE ON app.work_pollers TO qp_platform;
CREATE POLICY platform_erase ON app.work_pollers FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));

-- A lease hands out a new token nonce for the attempt (the lease id).
GRANT UPDATE (token_nonce, token_expires_at) ON app.step_attempts TO qp_runtime;

-- A waiting lease request is woken like an events long poll: same channel, the payload names the tenant (its id
-- is no secret to its own workers, and names nothing else), sent when the enqueuing transaction commits.
CREATE FUNCTION app.notify_work_item() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('execution_events', NEW.tenant_id::text || ':work');
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION app.notify_work_item() FROM PUBLIC;
CREATE TRIGGER work_item_enqueued AFTER INSERT ON app.work_items FOR EACH ROW EXECUTE FUNCTION app.notify_work_item();

-- Tenants with a lease that ran out (their worker stopped heartbeating): the sweeper fails those attempts in each
-- tenant's own transaction. Returns tenant ids only, as for the other sweeps (migration 0014); its owner gets
-- SELECT policies of its own on leased items and open attempts, which the app can never use (ADR 0002).
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY sweeper_leased_items ON app.work_items FOR SELECT TO %I USING (lease_id IS NOT NULL)',
        current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY sweeper_open_attempts ON app.step_attempts FOR SELECT TO %I USING (state = ''dispatched'')',
        current_user);
END
$$;
CREATE FUNCTION app.work_expired_lease_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT DISTINCT w.tenant_id FROM app.work_items w
      JOIN app.step_attempts a USING (tenant_id, execution_id, step_id, phase, attempt)
     WHERE w.lease_id IS NOT NULL AND w.lease_expires_at < pg_catalog.clock_timestamp() AND a.state = 'dispatched'
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.work_expired_lease_tenants(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.work_expired_lease_tenants(integer) TO qp_platform;
