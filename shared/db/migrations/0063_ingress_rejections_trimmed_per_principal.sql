-- intent_ref: platform.ingress
-- A tenant's record of rejected intent-requests events is trimmed per principal (ADR 0019, amended 2026-12-07).
--
-- The trim of migration 0026 kept the tenant's newest 1,000 rows whoever sent them: any principal of the tenant that
-- can send events (a Reader, whose every event is refused, too) could send 1,000 invalid ones and so evict every other
-- principal's rejections, erasing the record of their refused requests. Now each principal's rejections form a group
-- of their own, and a principal's new rejection trims only its own group to its newest `keep`: a flood evicts the
-- flooder's rows. The rows whose sender is not known (requested_by NULL) are one group of their own.
--
-- The tenant's record stays bounded as a whole: beyond `tenant_keep` rows, the row furthest down its group goes first
-- (any group's 501st newest before any group's 500th; among equals, the oldest first). Each of the G groups that have
-- rows thus keeps at least its newest min(its rows, tenant_keep / G) whatever the others send: one principal's flood
-- adds at most one group to G and takes from another group only what it holds beyond that share; while no more than
-- tenant_keep / keep groups have rows (10 with the app's bounds) no group loses a row to another's.
--
-- Retention is the tenant's as before. The floors: a group keeps at least 100 rows, the tenant at least 1,000 and at
-- least a group's, and nothing younger than a day goes. The owner's policies of migration 0026 still bind the
-- function to the pinned tenant.
--
-- The release still running when this is applied calls the two-argument trim (migrations stay compatible with it:
-- expand, then contract). It now keeps the tenant's bound of this one (10 times its `keep`) and its retention, and
-- trims no group by its own rule: during the swap a flood grows its own group up to the tenant's bound, never taking
-- another's rows below their share, and the flooder's next rejection under the new release trims it to its `keep`. A
-- later migration drops it once no release calls it.

-- The per-principal order, and the ranking's (the unknown sender's rows are together in it). A group is named by `=`
-- or `IS NULL` on the column itself: under the row-level security that binds the owner, a condition the planner
-- cannot tell is leakproof (COALESCE, say) is not used to search an index.
CREATE INDEX ingress_rejections_tenant_principal_created
    ON app.ingress_rejections (tenant_id, requested_by, created_at DESC, id DESC);

CREATE FUNCTION app.trim_ingress_rejections(principal text, keep integer, tenant_keep integer, max_age interval)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    tenant uuid := app.current_tenant_id();
    aged bigint;
    own bigint;
    tenant_wide bigint := 0;
BEGIN
    IF tenant IS NULL THEN
        RETURN 0;  -- no tenant pinned: nothing is anyone's to trim
    END IF;
    keep := GREATEST(keep, 100);
    tenant_keep := GREATEST(tenant_keep, keep, 1000);
    max_age := GREATEST(max_age, interval '1 day');

    DELETE FROM app.ingress_rejections r
     WHERE r.tenant_id = tenant AND r.created_at < pg_catalog.now() - max_age;
    GET DIAGNOSTICS aged = ROW_COUNT;

    IF principal IS NULL THEN
        DELETE FROM app.ingress_rejections r
         WHERE r.tenant_id = tenant AND r.requested_by IS NULL
           AND (r.created_at, r.id) < (SELECT k.created_at, k.id FROM app.ingress_rejections k
                                        WHERE k.tenant_id = tenant AND k.requested_by IS NULL
                                        ORDER BY k.created_at DESC, k.id DESC
                                        OFFSET keep - 1 LIMIT 1);
    ELSE
        DELETE FROM app.ingress_rejections r
         WHERE r.tenant_id = tenant AND r.requested_by = principal
           AND (r.created_at, r.id) < (SELECT k.created_at, k.id FROM app.ingress_rejections k
                                        WHERE k.tenant_id = tenant AND k.requested_by = principal
                                        ORDER BY k.created_at DESC, k.id DESC
                                        OFFSET keep - 1 LIMIT 1);
    END IF;
    GET DIAGNOSTICS own = ROW_COUNT;

    -- At most tenant_keep + 1 index entries read; the ranking below runs only past the bound.
    IF (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM app.ingress_rejections k WHERE k.tenant_id = tenant
                                         LIMIT tenant_keep::bigint + 1) head) > tenant_keep THEN
        DELETE FROM app.ingress_rejections r
         USING (SELECT ranked.id FROM (
                    SELECT k.id, k.created_at,
                           pg_catalog.row_number() OVER (PARTITION BY k.requested_by
                                                         ORDER BY k.created_at DESC, k.id DESC) AS place
                      FROM app.ingress_rejections k
                     WHERE k.tenant_id = tenant) ranked
                 ORDER BY ranked.place, ranked.created_at DESC, ranked.id DESC
                 OFFSET tenant_keep) beyond
         WHERE r.tenant_id = tenant AND r.id = beyond.id;
        GET DIAGNOSTICS tenant_wide = ROW_COUNT;
    END IF;
    RETURN aged + own + tenant_wide;
END
$$;

-- '' is no principal's (requested_by is 1 to 256 characters): no group's own rule applies.
CREATE OR REPLACE FUNCTION app.trim_ingress_rejections(keep integer, max_age interval) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT app.trim_ingress_rejections('', keep, 10 * GREATEST(keep, 100), max_age)
$$;

REVOKE ALL ON FUNCTION app.trim_ingress_rejections(text, integer, integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.trim_ingress_rejections(text, integer, integer, interval) TO qp_runtime;
-- Unchanged from migration 0026, restated: CREATE OR REPLACE keeps a function's grants.
REVOKE ALL ON FUNCTION app.trim_ingress_rejections(integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.trim_ingress_rejections(integer, interval) TO qp_runtime;
