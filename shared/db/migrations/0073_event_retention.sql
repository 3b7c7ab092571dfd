-- intent_ref: platform.events
-- Retention of delivered webhook deliveries and published domain events (ADR 0049).
--
-- Nothing deleted either: a delivery (a full payload per subscription per event) stayed once delivered, and an outbox
-- row once published, so both tables grew with every event for as long as the tenant lived. The timer
-- `event_retention` (shared/events/retention.py) now deletes, in bounded batches in each tenant's own transaction:
--   * webhook deliveries delivered more than 7 days ago (`delivered_at`). Pending deliveries are never touched, nor
--     failed ones: a failed delivery is the head its disabled subscription resends when it is enabled again (ADR 0030),
--     one per subscription, so it is kept until then or until the subscription is deleted;
--   * outbox rows published more than 7 days ago (`published_at`). Unpublished rows are never touched; only the relay
--     reads the outbox, and only its unpublished rows.
-- The periods are fixed here, in the functions, not taken from the caller: the finder answers which tenants have rows
-- past them, and with a period of its choosing the control plane could time a tenant's events (as migration 0039
-- held the sweeper's finder to its own floors).
--
-- As migrations 0025 and 0046: the tenants come from a SECURITY DEFINER finder that returns their ids and nothing else,
-- for the control plane; the rows go through functions bound to the pinned tenant, run in that tenant's transaction
-- (the runtime holds DELETE on neither table). FORCE ROW LEVEL SECURITY binds the functions' owner too, so it gets
-- policies of its own: for the finder, SELECT of the delivered deliveries and of the published outbox rows of any
-- tenant (which the app can never use, ADR 0002); for the deletes, SELECT, DELETE and UPDATE (the functions lock the
-- rows they take, FOR UPDATE SKIP LOCKED) bound to the pinned tenant, as the app's are. Each function names the
-- pinned tenant in its WHERE as well, since the finder's policies see every tenant's rows.

-- The indexes the finder and the deletes read (the tenant's oldest first) are built by migration 0076, CONCURRENTLY
-- and outside a transaction: built here, each held every write to its table (every transaction that emits a domain
-- event writes the outbox) for the whole build, and the CREATE POLICYs below, given up on a lock wait, threw the builds
-- away and retried them. Until 0076 has run the functions below are right, only slower (they read the tables).

DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY retention_due_tenants ON app.webhook_deliveries FOR SELECT TO %I USING (state = ''delivered'')',
        current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY retention_due_tenants ON app.outbox FOR SELECT TO %I USING (published_at IS NOT NULL)',
        current_user);
    -- The deliveries have the pinned tenant's SELECT and DELETE policies already (migration 0046).
    EXECUTE pg_catalog.format(
        'CREATE POLICY delete_pinned_tenant_lock ON app.webhook_deliveries FOR UPDATE TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))'
        ' WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY delete_pinned_tenant_read ON app.outbox FOR SELECT TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY delete_pinned_tenant ON app.outbox FOR DELETE TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY delete_pinned_tenant_lock ON app.outbox FOR UPDATE TO %I'
        ' USING (tenant_id = (SELECT app.current_tenant_id()))'
        ' WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))',
        current_user);
END
$$;

-- The tenants with a delivered delivery or a published event past its period, those whose oldest such row is the
-- most overdue first. Each table's tenants are walked one index read apiece (the next tenant after the last one),
-- never by reading every row: a backlog of millions costs the finder what a tenant with one row does.
CREATE FUNCTION app.retention_due_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    WITH RECURSIVE delivering (tenant_id) AS (
        (SELECT d.tenant_id FROM app.webhook_deliveries d WHERE d.state = 'delivered' ORDER BY d.tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT d.tenant_id FROM app.webhook_deliveries d
                 WHERE d.state = 'delivered' AND d.tenant_id > previous.tenant_id ORDER BY d.tenant_id LIMIT 1)
          FROM delivering previous WHERE previous.tenant_id IS NOT NULL
    ), publishing (tenant_id) AS (
        (SELECT o.tenant_id FROM app.outbox o WHERE o.published_at IS NOT NULL ORDER BY o.tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT o.tenant_id FROM app.outbox o
                 WHERE o.published_at IS NOT NULL AND o.tenant_id > previous.tenant_id ORDER BY o.tenant_id LIMIT 1)
          FROM publishing previous WHERE previous.tenant_id IS NOT NULL
    ), due (tenant_id, due_since) AS (
        SELECT t.tenant_id,
               (SELECT d.delivered_at FROM app.webhook_deliveries d
                 WHERE d.tenant_id = t.tenant_id AND d.state = 'delivered' AND d.delivered_at IS NOT NULL
                 ORDER BY d.delivered_at LIMIT 1) + interval '7 days'
          FROM delivering t WHERE t.tenant_id IS NOT NULL
        UNION ALL
        SELECT t.tenant_id,
               (SELECT o.published_at FROM app.outbox o
                 WHERE o.tenant_id = t.tenant_id AND o.published_at IS NOT NULL
                 ORDER BY o.published_at LIMIT 1) + interval '7 days'
          FROM publishing t WHERE t.tenant_id IS NOT NULL
    )
    SELECT due.tenant_id FROM due
     WHERE due.due_since < pg_catalog.now()
     GROUP BY due.tenant_id
     ORDER BY pg_catalog.min(due.due_since), due.tenant_id
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.retention_due_tenants(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.retention_due_tenants(integer) TO qp_platform;

-- Up to `max_rows` of the pinned tenant's deliveries delivered more than 7 days ago, the oldest first; a row another
-- transaction holds (a subscription's delete) is skipped, not waited for. The rows are chosen once, into an array:
-- as `id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` the planner may rescan the subquery once per outer row (a
-- nested loop), and each rescan skips the rows the delete has just removed and takes the next ones, so that a batch
-- of 7 deleted all 30 of a tenant's rows.
CREATE FUNCTION app.delete_delivered_webhook_deliveries(max_rows integer) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    tenant uuid := app.current_tenant_id();
    removed bigint;
BEGIN
    IF tenant IS NULL THEN
        RETURN 0;  -- no tenant pinned: nothing is anyone's to delete
    END IF;
    DELETE FROM app.webhook_deliveries d
     WHERE d.tenant_id = tenant
       AND d.id = ANY(ARRAY(SELECT o.id FROM app.webhook_deliveries o
                             WHERE o.tenant_id = tenant AND o.state = 'delivered'
                               AND o.delivered_at < pg_catalog.now() - interval '7 days'
                             ORDER BY o.delivered_at LIMIT GREATEST(max_rows, 0) FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

-- Up to `max_rows` of the pinned tenant's outbox rows published more than 7 days ago, the oldest first; skipped when
-- another transaction holds them (an erasure).
CREATE FUNCTION app.delete_published_outbox_events(max_rows integer) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    tenant uuid := app.current_tenant_id();
    removed bigint;
BEGIN
    IF tenant IS NULL THEN
        RETURN 0;  -- no tenant pinned: nothing is anyone's to delete
    END IF;
    DELETE FROM app.outbox o
     WHERE o.tenant_id = tenant
       AND o.id = ANY(ARRAY(SELECT p.id FROM app.outbox p
                             WHERE p.tenant_id = tenant AND p.published_at < pg_catalog.now() - interval '7 days'
                             ORDER BY p.published_at LIMIT GREATEST(max_rows, 0) FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

REVOKE ALL ON FUNCTION app.delete_delivered_webhook_deliveries(integer), app.delete_published_outbox_events(integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.delete_delivered_webhook_deliveries(integer), app.delete_published_outbox_events(integer)
    TO qp_runtime;
