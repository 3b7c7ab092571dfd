-- intent_ref: platform.tenant-isolation
-- A tenant is never provisioned for the nil UUID as its Entra tenant id.
--
-- Entra never issues the nil UUID as a `tid`, and the edge refuses a token that names it, so a tenant provisioned
-- for it could never be signed in to: a placeholder left by a script, not a customer. The control plane's model
-- refuses it (422); the database refuses it too, for every path that inserts tenants without that model. The rule
-- holds for an id when it is written (an insert, or an update that sets it), not for a row already stored: a CHECK,
-- even NOT VALID, is checked again on every update of a row, so such a tenant could no longer be suspended, and so
-- never erased. The error is a check_violation naming `tenants_entra_tenant_id_not_nil`, as a CHECK's would.

CREATE FUNCTION app.tenants_entra_tenant_id_not_nil() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.entra_tenant_id = OLD.entra_tenant_id THEN
        RETURN NEW;  -- an id stored before this migration is left as it is
    END IF;
    IF NEW.entra_tenant_id = '00000000-0000-0000-0000-000000000000'::uuid THEN
        RAISE EXCEPTION 'the nil UUID is not an Entra tenant id'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'tenants_entra_tenant_id_not_nil', TABLE = 'tenants',
                SCHEMA = 'app';
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION app.tenants_entra_tenant_id_not_nil() FROM PUBLIC;
CREATE TRIGGER tenants_entra_tenant_id_not_nil BEFORE INSERT OR UPDATE OF entra_tenant_id ON app.tenants
    FOR EACH ROW EXECUTE FUNCTION app.tenants_entra_tenant_id_not_nil();
