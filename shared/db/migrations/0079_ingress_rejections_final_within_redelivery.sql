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
-- Now the count trims (a principal's `keep`, the tenant's `tenant_keep`) never delete a row younger than the window
-- whose event a later delivery could start: they shrink it to a marker instead (`trimmed`; its `detail` replaced by
-- an empty object, its principal and key cleared: the lookup reads only the place, the stamp and the reason), which
-- the listing leaves out as a trimmed row and the lookup still finds. Markers are deleted once older than the window,
-- at the tenant's next rejection; rows older than it are deleted by the counts as before. The counts look at full
-- rows only (a marker counts toward neither bound). The retention's floor is the window.
--
-- Amended after a review (never applied outside tests before): only a refusal whose cause can go away is kept as a
-- marker (quota, a policy's or a grant's refusal, a suspension, an intent not found, a conflict, an input its version
-- refused). A body that is not a request (its problem type `validation-error`: not accepted JSON, or not the request
-- model) and a stale event are refused the same way on every delivery, whatever changes: their rows are deleted by
-- the counts as before, so the cheapest flood makes no markers. And a tenant keeps at most `tenant_keep` markers:
-- past that its markers are deleted (the deepest of each sender's first, below), and the events of those are no
-- longer held back by their record (ADR 0019).
--
-- The tenant's bound is applied only once its full rows pass it by a tenth (the slack), and then back to the bound:
-- at the bound, every rejection counted and ranked all of the tenant's rows (17 ms under its start lock); now the
-- ranking runs once every tenth of the bound's rejections at most.
--
-- A marker keeps its sender's group (`marker_group`: the first 8 bytes of the SHA-256 of its principal, empty for
-- an unknown sender; never the principal itself), so the markers are bounded as the full rows are: a sender's
-- markers beyond its newest `keep` go at its own trim, and the tenant's past `tenant_keep` go deepest of each group
-- first. Without the group the tenant's bound deleted its oldest markers whoever made them: one sender refused on
-- every event (a Reader, an unknown intent, a reused key) made a marker of each past its `keep` and evicted every
-- other sender's markers, whose events then started on their next delivery. A tenant's trims run one after the
-- other: its caller takes the tenant's `ingress-rejections` lock row (migration 0082) before the insert, so two
-- partitions capping at once cap one after the other, the second counting the first's markers, and no two trims
-- update each other's rows (not an advisory lock: any session on the app's login could hold one; ADR 0019). The
-- statements that delete markers skip rows another transaction holds (each such holder is deleting them).
--
-- Storage per tenant: at most `tenant_keep` plus its slack full rows (each document at most 32 KiB, the app's
-- bound), plus at most `tenant_keep` markers (no document, no principal, no key; 8 bytes of group).
--
-- The indexes the counts, the markers and the listing read are built concurrently by migration 0081 (a plain build
-- here held the ACCESS EXCLUSIVE lock of the ALTER TABLE below throughout, and every read of the table waited).
-- Until then the statements below read the indexes of migrations 0015 and 0063.
--
-- The owner updates only the pinned tenant's rows, under a policy of its own here bound to it as its others are; the
-- runtime still holds no UPDATE nor DELETE on the table. The function keeps its signature (and grants), so the
-- release still running during the swap trims by these rules too; the added column has a default, so its direct
-- INSERT still works.

ALTER TABLE app.ingress_rejections ADD COLUMN trimmed boolean NOT NULL DEFAULT false, ADD COLUMN marker_group bytea;

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
    -- The problem type of a body that is not a request (shared/ingress/rejecting.py): refused so on every delivery.
    as_sent_type text := 'https://quantum-platform.dev/problems/validation-error';
    -- The sender's group on its markers: 8 bytes of a hash, no principal text (empty: the unknown sender).
    own_group bytea := CASE WHEN principal IS NULL THEN '\x'::bytea
                            ELSE pg_catalog.substr(pg_catalog.sha256(pg_catalog.convert_to(principal, 'UTF8')), 1, 8)
                       END;
    slack integer;
    aged bigint;
    own_deleted bigint;
    own_marked bigint;
    tenant_deleted bigint := 0;
    tenant_marked bigint := 0;
    expired bigint;
    own_capped bigint := 0;
    capped bigint := 0;
BEGIN
    IF tenant IS NULL THEN
        RETURN 0;  -- no tenant pinned: nothing is anyone's to trim
    END IF;
    keep := GREATEST(keep, 100);
    tenant_keep := GREATEST(tenant_keep, keep, 1000);
    slack := tenant_keep / 10;
    max_age := GREATEST(max_age, interval '25 hours');

    -- Full rows past the retention (markers past the window go below): no delivery of their events can start
    -- anything now.
    DELETE FROM app.ingress_rejections r
     WHERE r.tenant_id = tenant AND NOT r.trimmed AND r.created_at < pg_catalog.now() - max_age;
    GET DIAGNOSTICS aged = ROW_COUNT;

    -- The sender's full rows beyond its newest `keep`: deleted when older than the window or refused as sent (a
    -- stale event, a body that is not a request: refused the same on every delivery), else made markers.
    -- A group is named by `=` or `IS NULL` on the column itself, so its index is searched (migration 0081).
    IF principal IS NULL THEN
        WITH beyond AS (
            SELECT r.id, r.created_at < window_start
                         OR r.reason = 'stale' OR (r.reason = 'invalid' AND r.detail ->> 'type' = as_sent_type) AS gone
              FROM app.ingress_rejections r
             WHERE r.tenant_id = tenant AND NOT r.trimmed
               AND r.requested_by IS NULL
               AND (r.created_at, r.id) < (SELECT k.created_at, k.id FROM app.ingress_rejections k
                                            WHERE k.tenant_id = tenant AND NOT k.trimmed
                                              AND k.requested_by IS NULL
                                            ORDER BY k.created_at DESC, k.id DESC
                                            OFFSET keep - 1 LIMIT 1)
        ), gone AS (
            DELETE FROM app.ingress_rejections r USING beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND b.gone
            RETURNING 1
        ), marked AS (
            UPDATE app.ingress_rejections r
               SET trimmed = true, detail = '{}'::jsonb, requested_by = NULL, idempotency_key = NULL,
                   marker_group = own_group
              FROM beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND NOT b.gone
            RETURNING 1
        )
        SELECT (SELECT pg_catalog.count(*) FROM gone), (SELECT pg_catalog.count(*) FROM marked)
          INTO own_deleted, own_marked;
    ELSE
        WITH beyond AS (
            SELECT r.id, r.created_at < window_start
                         OR r.reason = 'stale' OR (r.reason = 'invalid' AND r.detail ->> 'type' = as_sent_type) AS gone
              FROM app.ingress_rejections r
             WHERE r.tenant_id = tenant AND NOT r.trimmed
               AND r.requested_by = principal
               AND (r.created_at, r.id) < (SELECT k.created_at, k.id FROM app.ingress_rejections k
                                            WHERE k.tenant_id = tenant AND NOT k.trimmed
                                              AND k.requested_by = principal
                                            ORDER BY k.created_at DESC, k.id DESC
                                            OFFSET keep - 1 LIMIT 1)
        ), gone AS (
            DELETE FROM app.ingress_rejections r USING beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND b.gone
            RETURNING 1
        ), marked AS (
            UPDATE app.ingress_rejections r
               SET trimmed = true, detail = '{}'::jsonb, requested_by = NULL, idempotency_key = NULL,
                   marker_group = own_group
              FROM beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND NOT b.gone
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
            SELECT ranked.id, ranked.gone FROM (
                SELECT k.id, k.created_at,
                       k.created_at < window_start
                           OR k.reason = 'stale' OR (k.reason = 'invalid' AND k.detail ->> 'type' = as_sent_type)
                           AS gone,
                       pg_catalog.row_number() OVER (PARTITION BY k.requested_by
                                                     ORDER BY k.created_at DESC, k.id DESC) AS place
                  FROM app.ingress_rejections k
                 WHERE k.tenant_id = tenant AND NOT k.trimmed) ranked
             ORDER BY ranked.place, ranked.created_at DESC, ranked.id DESC
             OFFSET tenant_keep
        ), gone AS (
            DELETE FROM app.ingress_rejections r USING beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND b.gone
            RETURNING 1
        ), marked AS (
            UPDATE app.ingress_rejections r
               SET trimmed = true, detail = '{}'::jsonb, requested_by = NULL, idempotency_key = NULL,
                   marker_group = CASE WHEN r.requested_by IS NULL THEN '\x'::bytea
                                       ELSE pg_catalog.substr(pg_catalog.sha256(pg_catalog.convert_to(r.requested_by,
                                                                                                      'UTF8')), 1, 8)
                                  END
              FROM beyond b
             WHERE r.tenant_id = tenant AND r.id = b.id AND NOT b.gone
            RETURNING 1
        )
        SELECT (SELECT pg_catalog.count(*) FROM gone), (SELECT pg_catalog.count(*) FROM marked)
          INTO tenant_deleted, tenant_marked;
    END IF;

    -- The markers' bounds, applied when this trim made markers (the only way their count grows). The caller holds
    -- the tenant's `ingress-rejections` lock row (migration 0082), so two trims at once cap one after the other, the
    -- second seeing the first's markers; every statement below skips the rows another transaction holds (each such
    -- holder deletes them: an erasure, a hub's recreated place), so it waits for no row.

    -- Markers past the window: no delivery of their events can start anything now.
    DELETE FROM app.ingress_rejections r
     WHERE r.tenant_id = tenant AND r.id IN (SELECT m.id FROM app.ingress_rejections m
                                              WHERE m.tenant_id = tenant AND m.trimmed AND m.created_at < window_start
                                                FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS expired = ROW_COUNT;

    IF own_marked + tenant_marked > 0 THEN
        -- The sender's markers beyond its newest `keep` (its group's index, migration 0081): one sender's flood
        -- evicts its own markers only, as it does its full rows.
        DELETE FROM app.ingress_rejections r
         WHERE r.tenant_id = tenant
           AND r.id IN (SELECT m.id FROM app.ingress_rejections m
                         WHERE m.tenant_id = tenant AND m.trimmed AND m.marker_group = own_group
                           AND (m.created_at, m.id) < (SELECT k.created_at, k.id FROM app.ingress_rejections k
                                                        WHERE k.tenant_id = tenant AND k.trimmed
                                                          AND k.marker_group = own_group
                                                        ORDER BY k.created_at DESC, k.id DESC
                                                        OFFSET keep - 1 LIMIT 1)
                           FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS own_capped = ROW_COUNT;

        -- The tenant's hard bound: past `tenant_keep` markers, the deepest of each group go first, as the full rows'
        -- bound ranks them (their events are no longer held back: ADR 0019). At most tenant_keep + 1 index entries
        -- read unless over; the ranking reads the tenant's markers.
        IF (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM app.ingress_rejections k
                                              WHERE k.tenant_id = tenant AND k.trimmed
                                              LIMIT tenant_keep::bigint + 1) head) > tenant_keep THEN
            DELETE FROM app.ingress_rejections r
             WHERE r.tenant_id = tenant
               AND r.id IN (SELECT m.id FROM app.ingress_rejections m
                             WHERE m.tenant_id = tenant AND m.trimmed
                               AND m.id IN (SELECT ranked.id FROM (
                                                SELECT k.id, k.created_at,
                                                       pg_catalog.row_number() OVER (
                                                           PARTITION BY k.marker_group
                                                           ORDER BY k.created_at DESC, k.id DESC) AS place
                                                  FROM app.ingress_rejections k
                                                 WHERE k.tenant_id = tenant AND k.trimmed) ranked
                                             ORDER BY ranked.place, ranked.created_at DESC, ranked.id DESC
                                            OFFSET tenant_keep)
                               FOR UPDATE SKIP LOCKED);
            GET DIAGNOSTICS capped = ROW_COUNT;
        END IF;
    END IF;
    RETURN aged + own_deleted + own_marked + tenant_deleted + tenant_marked + expired + own_capped + capped;
END
$$;
