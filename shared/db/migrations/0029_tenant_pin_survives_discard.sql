-- intent_ref: platform.tenant-isolation
-- A tenant pin cannot be replaced after DISCARD TEMP.
--
-- DISCARD TEMP drops every temporary table of the session without asking whose it is, so SQL running in a
-- tenant's transaction could drop the pin table (migration 0008) and call pin_tenant again for another tenant,
-- which found no table, created one and pinned that tenant. The pin table is now only created in a transaction
-- that has no transaction id yet: the pin's own row gives every pinned transaction one, so a transaction that may
-- have pinned a tenant can never pin again once its table is gone (its policies then see no tenant). A session's
-- first pin comes first in its transaction (the prologue), before anything is written; a later transaction on the
-- same connection creates the table again.

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
    -- Created once per session (IF NOT EXISTS would send a notice on every call).
    IF pg_catalog.to_regclass('pg_temp.tenant_pin') IS NULL THEN
        IF pg_catalog.pg_current_xact_id_if_assigned() IS NOT NULL THEN
            RAISE EXCEPTION 'the tenant pin was discarded in this transaction, which may not pin again'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
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
