-- intent_ref: platform.modules
-- Remote modules a tenant registers: an action its own workers handle, with the JSON Schema of its parameters.
--
-- That an action must not shadow a built-in module is enforced in code (shared/registry/modules.py): the
-- built-in catalog lives in code, so only code knows it.

CREATE TABLE app.modules (
    tenant_id     uuid NOT NULL REFERENCES app.tenants (id),
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    action        text NOT NULL CHECK (length(action) <= 128 AND action ~ '^[a-z][a-z0-9-]*(\.[a-z0-9-]+)*$'),
    description   text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    params_schema jsonb NOT NULL CHECK (jsonb_typeof(params_schema) = 'object'),
    defaults      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(defaults) = 'object'),
    timeout_s     integer NOT NULL CHECK (timeout_s BETWEEN 1 AND 86400),
    created_by    text NOT NULL CHECK (length(created_by) BETWEEN 1 AND 256),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    -- One registration per action and tenant; a concurrent duplicate loses on this constraint.
    UNIQUE (tenant_id, action)
);
SELECT app.enable_tenant_isolation('app.modules');
-- No UPDATE: a registration is never edited in place; removing one is a DELETE.
GRANT SELECT, INSERT, DELETE ON app.modules TO qp_runtime;
GRANT DELETE ON app.modules TO qp_platform;
CREATE POLICY platform_erase ON app.modules FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
