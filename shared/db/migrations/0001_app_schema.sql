-- intent_ref: platform.tenant-isolation
-- The app schema and the tenant-context helper every row-level security policy uses.

CREATE SCHEMA IF NOT EXISTS app;
REVOKE ALL ON SCHEMA app FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO qp_runtime;

-- NULLIF: after a transaction-local set_config ends, the GUC reads back as '' on that pooled
-- connection (not NULL); both must mean "no tenant", which matches no row.
CREATE FUNCTION app.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = ''
AS $$ SELECT NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')::uuid $$;

REVOKE ALL ON FUNCTION app.current_tenant_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.current_tenant_id() TO qp_runtime;
