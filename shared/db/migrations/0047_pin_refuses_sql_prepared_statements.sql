-- intent_ref: platform.tenant-isolation
-- A session holding a statement prepared by SQL pins no tenant.
--
-- Prepared statements belong to the session and outlive its transactions: SQL running in one tenant's transaction
-- could DEALLOCATE a statement the driver had prepared on the pooled connection and PREPARE its own text under the
-- name, which the next borrower (another tenant's transaction, already pinned) then ran. The driver prepares through
-- the protocol only (pg_prepared_statements.from_sql is false), so a statement prepared by SQL marks a tampered
-- session: the pin refuses it (SQLSTATE QPT01), and the app closes the connection (shared/db/session.py), so the
-- pool replaces it. Every tenant transaction pins first, before any statement of its own runs.

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
    -- The driver prepares statements through the protocol; one prepared by SQL was put there by a transaction's own
    -- SQL, under a name the driver may run next, in this (another tenant's) transaction: the session is refused.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements s WHERE s.from_sql) THEN
        RAISE EXCEPTION 'this session holds a statement prepared by SQL; it pins no tenant' USING ERRCODE = 'QPT01';
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
