-- intent_ref: platform.tenant-isolation
-- A new tenant's name is a DNS-label slug, as the control plane's model has it: 2 to 63 lower-case letters and
-- digits, single hyphens between them (no hyphen at either end, none doubled).
--
-- 0002's CHECK let `ab-` and `x--y` through, which read as typos or truncations in every listing, URL and log line;
-- the model refuses them (422) and the database refuses them too, for every path that inserts tenants without that
-- model. The rule holds for a name when it is written (an insert, or an update that sets the name), not for rows
-- already stored: those are left for an operator to look at rather than failing the migration of a running estate,
-- and left usable. A CHECK, even NOT VALID, is checked again on every update of a row, whatever it changes, so a
-- tenant named before this could no longer be suspended, re-quoted or have its settings changed; the trigger
-- checks only a name being written. The error is a check_violation naming `tenants_name_slug`, as a CHECK's would.

CREATE FUNCTION app.tenants_name_slug() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.name = OLD.name THEN
        RETURN NEW;  -- a name stored before this migration is left as it is
    END IF;
    IF NEW.name !~ '^[a-z0-9]+(-[a-z0-9]+)*$' OR pg_catalog.char_length(NEW.name) NOT BETWEEN 2 AND 63 THEN
        RAISE EXCEPTION 'tenant name % is not 2 to 63 lower-case letters and digits with single hyphens between them',
            pg_catalog.quote_literal(NEW.name)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'tenants_name_slug', TABLE = 'tenants', SCHEMA = 'app';
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION app.tenants_name_slug() FROM PUBLIC;
CREATE TRIGGER tenants_name_slug BEFORE INSERT OR UPDATE OF name ON app.tenants
    FOR EACH ROW EXECUTE FUNCTION app.tenants_name_slug();
