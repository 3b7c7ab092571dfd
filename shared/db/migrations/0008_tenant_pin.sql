-- intent_ref: platform.tenant-isolation
-- Pin the tenant of a transaction so SQL running inside it cannot switch tenants.
--
-- A custom GUC is settable by any role, so `set_config('app.tenant_id', ...)` alone would let injected SQL
-- move to another tenant mid-request. Instead the tenant is written once per transaction into a session
-- temp table owned by qp_owner (the runtime roles have no privilege on it and may not create temp tables),
-- through a SECURITY DEFINER function that refuses a second, different tenant; the table empties at commit.
-- current_tenant_id() reads that pin, never the GUC.

DO $$
BEGIN
    EXECUTE pg_catalog.format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', pg_catalog.current_database());
    -- The migrating role owns pin_tenant (qp_owner, or an external server's login) and creates the pin table.
    EXECUTE pg_catalog.format('GRANT TEMPORARY ON DATABASE %I TO %I', pg_catalog.current_database(), current_user);
END
$$;

CREATE FUNCTION app.pin_tenant(tenant uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    pinned uuid;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Created once per session (IF NOT EXISTS would send a notice on every call).
    IF pg_catalog.to_regclass('pg_temp.tenant_pin') IS NULL THEN
        CREATE TEMPORARY TABLE tenant_pin (tenant_id uuid NOT NULL) ON COMMIT DELETE ROWS;
    END IF;
    -- Whoever created pg_temp.tenant_pin owns it; only a table created here (by qp_owner) is trusted.
    IF (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = 'pg_temp.tenant_pin'::regclass)
       IS DISTINCT FROM (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'tenant pin table is not owned by %', current_user USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT p.tenant_id INTO pinned FROM pg_temp.tenant_pin p;
    IF pinned IS NULL THEN
        INSERT INTO pg_temp.tenant_pin (tenant_id) VALUES (tenant);
    ELSIF pinned <> tenant THEN
        RAISE EXCEPTION 'this transaction is pinned to another tenant' USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
    SET search_path = ''
AS $$
BEGIN
    -- No pin table yet in this session, or no row in this transaction: no tenant, so no rows.
    IF pg_catalog.to_regclass('pg_temp.tenant_pin') IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT p.tenant_id FROM pg_temp.tenant_pin p LIMIT 1);
END
$$;

REVOKE ALL ON FUNCTION app.pin_tenant(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.pin_tenant(uuid) TO qp_runtime, qp_platform;
REVOKE ALL ON FUNCTION app.current_tenant_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.current_tenant_id() TO qp_runtime, qp_platform;
