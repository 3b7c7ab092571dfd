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

-- Every tenant table is isolated the same way: ENABLE + FORCE row-level security, a permissive policy and a
-- restrictive one (so a stray permissive policy added later cannot widen access), both with USING and
-- WITH CHECK on the row's own tenant column. Migrations call this for each new tenant table.
CREATE FUNCTION app.enable_tenant_isolation(target regclass, tenant_column name DEFAULT 'tenant_id')
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
DECLARE
    predicate text := format('%I = (SELECT app.current_tenant_id())', tenant_column);
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
    EXECUTE format('CREATE POLICY tenant_isolation ON %s FOR ALL TO qp_runtime USING (%s) WITH CHECK (%s)',
                   target, predicate, predicate);
    EXECUTE format('CREATE POLICY tenant_isolation_restrictive ON %s AS RESTRICTIVE FOR ALL TO qp_runtime'
                   ' USING (%s) WITH CHECK (%s)', target, predicate, predicate);
END
$$;

REVOKE ALL ON FUNCTION app.enable_tenant_isolation(regclass, name) FROM PUBLIC;
