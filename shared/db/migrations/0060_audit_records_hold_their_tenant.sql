-- intent_ref: platform.audit
-- A record the runtime role adds holds its tenant's row as a foreign key would (ADR 0012, amended 2026-12-07).
--
-- Migration 0041 refused a record of the runtime role whose tenant row was gone, but only as its statement saw the
-- tenant: a record added while the erasure held the tenant row (its FOR UPDATE) did not wait, saw the row as last
-- committed, and was taken. Its transaction committing after the erasure's second pass left it in the trail of an
-- erased tenant. The check now locks the row (FOR KEY SHARE, what a foreign key's check takes): a record added first
-- holds the erasure at the tenant row until its transaction ends, and the erasure then deletes it with the rest; one
-- added while the erasure holds the row waits for it and, the tenant gone, is refused.
--
-- The audit tables still have no foreign key (migrations 0005, 0028): the erasure's own record, the control plane's,
-- outlives the tenant row, and these policies are the runtime role's only.
--
-- The refusal is the one migration 0041 made (insufficient_privilege, the message of a row-level security refusal),
-- now naming `<table>_needs_its_tenant` as its constraint: a request whose record waited on the erasure is then
-- answered as one of an unknown tenant (401) rather than as a bug, as a refused foreign key to the tenant is.

-- Run as the caller (the runtime role, whose policies show it its own tenant's row and whose UPDATE grant allows the
-- lock, as `hold_tenant` takes it): the owner sees no tenant row under FORCE ROW LEVEL SECURITY. It looks at the
-- pinned tenant only, so it tells nothing of another tenant; a record naming another is refused by the policy's
-- other term.
CREATE FUNCTION app.audit_record_tenant_held(record_tenant uuid, record_table text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = ''
AS $$
BEGIN
    IF record_tenant IS DISTINCT FROM app.current_tenant_id() THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM app.tenants t WHERE t.id = record_tenant FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'new row violates row-level security policy "tenant_isolation_restrictive" for table "%"',
                record_table
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'The record''s tenant has no row: it was erased.',
                  SCHEMA = 'app',
                  TABLE = record_table,
                  CONSTRAINT = record_table || '_needs_its_tenant';
    END IF;
    RETURN true;
END
$$;

REVOKE ALL ON FUNCTION app.audit_record_tenant_held(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.audit_record_tenant_held(uuid, text) TO qp_runtime;

ALTER POLICY tenant_isolation_restrictive ON app.audit_events
    WITH CHECK (tenant_id = (SELECT app.current_tenant_id())
                AND app.audit_record_tenant_held(tenant_id, 'audit_events'));

-- A record set aside (the relay's one update, which it may make for a tenant erased meanwhile) is never copied and
-- needs no tenant, as in migration 0041; CASE, so that it takes no lock and meets no refusal.
ALTER POLICY tenant_isolation_restrictive ON app.audit_outbox
    WITH CHECK (tenant_id = (SELECT app.current_tenant_id())
                AND CASE WHEN refused_at IS NOT NULL THEN true
                         ELSE app.audit_record_tenant_held(tenant_id, 'audit_outbox') END);
