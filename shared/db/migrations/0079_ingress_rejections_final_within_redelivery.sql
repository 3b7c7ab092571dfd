-- intent_ref: platform.ingress
-- A recorded rejection stays final while its event can still be delivered (ADR 0019, amended 2026-12-07).
--
-- An event whose rejection is recorded answers that record on every later delivery and starts nothing; the start
-- looks for the row (hub, partition, sequence number, enqueued time). The trims of migration 0063 deleted rows by
-- count alone: a burst of a sender's newer rejections (on other partitions while this one's batch was retried in
-- place) deleted a row whose event was redelivered afterwards, and that event, refused for quota, started once the
-- quota had freed. An event can be delivered until 24 h after it was enqueued (then it is refused `stale`, whatever
-- its record says, and starts nothing) plus the time its last processing takes; its row is recorded after it was
-- enqueued. So a row younger than 25 h (the window below) may be the only thing that holds its event back.
--
-- Now the count trims (a principal's `keep`, the tenant's `tenant_keep`) never delete a row younger than the window:
-- they shrink it to a marker instead (`trimmed`, its `detail` replaced by a small stub; the reason, place, stamp,
-- principal and key stay), which the listing leaves out as a trimmed row and the lookup still finds. Markers are
-- deleted once older than the window, at the tenant's next rejection; rows older than it are deleted by the counts as
-- before. The counts look at full rows only (a marker counts toward neither bound). The retention's floor is the
-- window.
--
-- The tenant's bound is applied only once its full rows pass it by a tenth (the slack), and then back to the bound:
-- at the bound, every rejection counted and ranked all of the tenant's rows (17 ms under its start lock); now the
-- ranking runs once every tenth of the bound's rejections at most.
--
-- Storage per tenant: at most `tenant_keep` plus its slack full rows (each document at most 32 KiB, the app's
-- bound), plus markers of its rejections of the last 25 h, each a few hundred bytes (the key and principal are at
-- most 256 characters each): bounded by what its senders can put on the hub in 25 h, which the hub keeps itself for
-- its retention at up to 1 MB an event.
--
-- The owner updates only the pinned tenant's rows, under a policy of its own here bound to it as its others are; the
-- runtime still holds no UPDATE nor DELETE on the table. The function keeps its signature (and grants), so the
-- release still running during the swap trims by these rules too; the added column has a default, so its direct
-- INSERT still works.

ALTER TABLE app.ingress_rejections ADD COLUMN trimmed boolean NOT NULL DEFAULT false;

-- The counts and ranking read full rows only; the markers' deletion reads markers only.
CREATE INDEX ingress_rejections_tenant_principal_full
    ON app.ingress_rejections (tenant_id, requested_by, created_at DESC, id DESC) WHERE NOT trimmed;
CREATE INDEX ingress_rejections_tenant_markers
    ON app.ingress_rejections (tenant_id, created_at) WHERE trimmed;

DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY trim_pinned_tenant_mark ON app.ingress_rejections FOR UPDATE TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))'
        ' WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
END
$$;

CREATE OR REPLACE FUNCTION app.trim_ingress_rejections(principal text, keep integer, tenant_keep integer,
                                                       max_age interval)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    tenant uuid := app.current_tenant_id();
    window_start timestamptz := pg_catalog.now() - interval '25 hours';
    slack integer;
    aged bigint;
    own_deleted bigint;
    own_marked bigint;
    tenant_deleted bigint := 0;
    tenant_marked bigint := 0;
BEGIN
    IF tenant IS NULL THEN
        RETURN 0;  -- no tenant pinned: nothing is anyone's to trim
    END IF;
    keep := GREATEST(keep, 100);
    tenant_keep := GREATEST(tenant_keep, keep, 1000);
    slack := tenant_keep / 10;
    max_age := GREATEST(max_age, interval '25 hours');

    -- Past the retention, and markers past the window: no delivery of their events can start anything now.
    DELETE FROM app.ingress_rejections r
     WHERE r.tenant_id = tenant AND r.created_at < pg_catalog.now() - max_age;
    GET DIAGNOSTICS aged = ROW_COUNT;
    DELETE FROM app.ingress_rejections r
     WHERE r.tenant_id = tenant AND r.trimmed AND r.created_at < window_start;

    -- The sender's full rows beyond its newest `keep`: deleted when older than the window, else made markers.
    -- A group is named by `=` or `IS NULL` on the column itself, so its index is searched (migration 0063).
    IF principal IS NULL THEN
        WITH beyond AS (
            SELECT r.id, r.created_at FROM app.ingress_rejections r
             WHERE r.tenant_id = tenant AND NOT r.trimmed
               AND r.requested_by IS NULL
               AND (r.created_at, r.id) < (SELECT k.created_at, k.id FROM app.ingress_rejections k
                                            WHERE k.tenant_id = tenant AND NOT k.trimmed
                                              AND k.requested_by IS NULL
                                            ORDER BY k.created_at DESC, k.id DESC
                                            OFFSET keep - 1 LIMIT 1)
        ), gone AS (
            DELETE FROM app.ingress_rejections r USING beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND b.created_at < window_start
            RETURNING 1
        ), marked AS (
            UPDATE app.ingress_rejections r
               SET trimmed = true, detail = pg_catalog.jsonb_build_object('reason', r.reason, 'trimmed', true)
              FROM beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND b.created_at >= window_start
            RETURNING 1
        )
        SELECT (SELECT pg_catalog.count(*) FROM gone), (SELECT pg_catalog.count(*) FROM marked)
          INTO own_deleted, own_marked;
    ELSE
        WITH beyond AS (
            SELECT r.id, r.created_at FROM app.ingress_rejections r
             WHERE r.tenant_id = tenant AND NOT r.trimmed
               AND r.requested_by = principal
               AND (r.created_at, r.id) < (SELECT k.created_at, k.id FROM app.ingress_rejections k
                                            WHERE k.tenant_id = tenant AND NOT k.trimmed
                                              AND k.requested_by = principal
                                            ORDER BY k.created_at DESC, k.id DESC
                                            OFFSET keep - 1 LIMIT 1)
        ), gone AS (
            DELETE FROM app.ingress_rejections r USING beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND b.created_at < window_start
            RETURNING 1
        ), marked AS (
            UPDATE app.ingress_rejections r
               SET trimmed = true, detail = pg_catalog.jsonb_build_object('reason', r.reason, 'trimmed', true)
              FROM beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND b.created_at >= window_start
            RETURNING 1
        )
        SELECT (SELECT pg_catalog.count(*) FROM gone), (SELECT pg_catalog.count(*) FROM marked)
          INTO own_deleted, own_marked;
    END IF;

    -- At most tenant_keep + slack + 1 index entries read; the ranking below runs only past the bound and its slack,
    -- and brings the full rows back to the bound (the deepest of each principal's first, as before).
    IF (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM app.ingress_rejections k
                                          WHERE k.tenant_id = tenant AND NOT k.trimmed
                                          LIMIT tenant_keep::bigint + slack + 1) head) > tenant_keep + slack THEN
        WITH beyond AS (
            SELECT ranked.id, ranked.created_at FROM (
                SELECT k.id, k.created_at,
                       pg_catalog.row_number() OVER (PARTITION BY k.requested_by
                                                     ORDER BY k.created_at DESC, k.id DESC) AS place
                  FROM app.ingress_rejections k
                 WHERE k.tenant_id = tenant AND NOT k.trimmed) ranked
             ORDER BY ranked.place, ranked.created_at DESC, ranked.id DESC
             OFFSET tenant_keep
        ), gone AS (
            DELETE FROM app.ingress_rejections r USING beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND b.created_at < window_start
            RETURNING 1
        ), marked AS (
            UPDATE app.ingress_rejections r
               SET trimmed = true, detail = pg_catalog.jsonb_build_object('reason', r.reason, 'trimmed', true)
              FROM beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND b.created_at >= window_start
            RETURNING 1
        )
        SELECT (SELECT pg_catalog.count(*) FROM gone), (SELECT pg_catalog.count(*) FROM marked)
          INTO tenant_deleted, tenant_marked;
    END IF;
    RETURN aged + own_deleted + own_marked + tenant_deleted + tenant_marked;
END
$$;
