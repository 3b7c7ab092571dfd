-- intent_ref: platform.ingress
-- A tenant's record of rejected intent-requests events stays bounded: the newest rows only, none older than its
-- retention. A principal of the tenant that floods the hub with invalid events would otherwise grow a shared table
-- without end (ADR 0019). The app stays append-only on the table: what it may do is call this function, in its
-- tenant's transaction, which trims that tenant's rows by the rule and nothing else. A caller cannot make the record
-- shorter than the floors below. FORCE ROW LEVEL SECURITY binds the function's owner (the migrating role) too, so it
-- gets policies of its own, bound to the pinned tenant as the app's are; the app can never become that role
-- (ADR 0002).

DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY trim_pinned_tenant_read ON app.ingress_rejections FOR SELECT TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY trim_pinned_tenant ON app.ingress_rejections FOR DELETE TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
END
$$;

CREATE FUNCTION app.trim_ingress_rejections(keep integer, max_age interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    tenant uuid := app.current_tenant_id();
    removed bigint;
BEGIN
    IF tenant IS NULL THEN
        RETURN 0;  -- no tenant pinned: nothing is anyone's to trim
    END IF;
    keep := GREATEST(keep, 100);
    max_age := GREATEST(max_age, interval '1 day');
    DELETE FROM app.ingress_rejections r
     WHERE r.tenant_id = tenant
       AND (r.created_at < pg_catalog.now() - max_age
            OR (r.created_at, r.id) < (SELECT k.created_at, k.id FROM app.ingress_rejections k
                                        WHERE k.tenant_id = tenant
                                        ORDER BY k.created_at DESC, k.id DESC
                                        OFFSET keep - 1 LIMIT 1));
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

REVOKE ALL ON FUNCTION app.trim_ingress_rejections(integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.trim_ingress_rejections(integer, interval) TO qp_runtime;
