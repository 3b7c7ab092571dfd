-- intent_ref: platform.tenant-isolation
-- The nil-UUID rule of 0055 holds for an Entra tenant id when it is written, not for a row already stored.
--
-- 0055 added it as a CHECK ... NOT VALID, meaning to leave rows stored before it alone; but a CHECK, even NOT VALID,
-- is checked again on every update of a row, whatever the update changes, so a tenant stored for the nil UUID before
-- 0055 could no longer be suspended, and so never erased. A trigger checks only an id being written (an insert, or an
-- update that sets it), as 0056 does for a tenant's name. The error is still a check_violation naming
-- `tenants_entra_tenant_id_not_nil`, as the CHECK's was.

ALTER TABLE app.tenants DROP CONSTRAINT tenants_entra_tenant_id_not_nil;

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
