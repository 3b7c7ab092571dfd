-- intent_ref: platform.tenant-isolation
-- Same contract as 0008's app.pin_tenant, minus a statement per transaction: the session's pin table is created
-- only when it does not exist yet (CREATE ... IF NOT EXISTS also sent a notice on every call).

CREATE OR REPLACE FUNCTION app.pin_tenant(tenant uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    pinned uuid;
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
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
