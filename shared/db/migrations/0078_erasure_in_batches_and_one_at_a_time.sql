-- intent_ref: platform.tenants
-- A tenant's erasure deletes its rows in bounded batches, each a short transaction, and runs one at a time (ADR 0012,
-- amended 2026-12-08).
--
-- The row deletion was one transaction across every row of every tenant table, holding a transaction id from its
-- start: the outbox relay sends only the events of transactions older than every one running (migration 0040), so
-- every other tenant's domain events and webhooks waited for the whole erasure of a big tenant. The rows now go in
-- batches of a bounded number, each in a transaction of its own, before a last short transaction under the tenant
-- row's lock deletes what is left (rows written meanwhile), the export jobs and the tenant row.
--
-- qp_platform reads no tenant's rows (migration 0007): it deletes whole tables under its DELETE policies bound to the
-- pinned tenant, and a bounded delete must read the rows it chooses. So the batches are SECURITY DEFINER functions,
-- bound to the pinned tenant as the runtime's deletes are (migration 0046): exactly up to `batch` rows of the pinned
-- tenant of one tenant table, and nothing else. FORCE ROW LEVEL SECURITY binds their owner (the migrating role), which
-- gets a SELECT and a DELETE policy of its own on each tenant table, bound to the pinned tenant; the app can never
-- become that role (ADR 0002). Each function names the pinned tenant in its WHERE as well (the owner's older SELECT
-- policies on some tables see every tenant's rows). The caller checks that the tenant is suspended and marked for
-- erasure first (qp_platform reads app.tenants; the owner's policies there see no row).
--
-- An erasure sent again while one runs was waiting on the tenant row's lock, each holding one of the control plane's
-- few connections, and with them full every tenant's token lookups failed; two at once both answered, the second's
-- late pass removing the first's record. `control.tenant_erasures` holds a lease per tenant under erasure: taken with
-- the mark, renewed while the erasure runs, dropped with the tenant row (or when the erasure fails); another erasure
-- of the tenant is refused (409 `erasure-in-progress`) while it is held. A control-plane table: no tenant role reaches
-- the schema.

CREATE TABLE control.tenant_erasures (
    tenant_id   uuid PRIMARY KEY,
    -- The erasure holding the lease (its own random id): only it renews or drops it.
    holder      uuid NOT NULL,
    -- Past it the erasure is taken to have ended without a word (a host killed), and the tenant may be erased again.
    lease_until timestamptz NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON control.tenant_erasures TO qp_platform;

DO $$
DECLARE
    target text;
BEGIN
    FOREACH target IN ARRAY ARRAY['idempotency_keys', 'webhook_deliveries', 'webhook_subscriptions', 'outbox',
                                  'ingress_rejections', 'execution_events', 'work_items', 'work_pollers',
                                  'step_attempts', 'execution_steps', 'task_token_keys', 'executions',
                                  'intent_versions', 'intents', 'tenant_policies', 'rate_buckets', 'tenant_locks',
                                  'modules', 'audit_outbox', 'audit_events']
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE POLICY erase_batch_read ON app.%I FOR SELECT TO %I'
            ' USING (tenant_id = (SELECT app.current_tenant_id()))',
            target, current_user);
        EXECUTE pg_catalog.format(
            'CREATE POLICY erase_batch ON app.%I FOR DELETE TO %I'
            ' USING (tenant_id = (SELECT app.current_tenant_id()))',
            target, current_user);
    END LOOP;
END
$$;

-- Up to `batch` rows of the pinned tenant in tenant table `target` (any table but app.executions, whose ids the
-- erasure keeps: app.erase_tenant_executions); how many went. The rows are chosen once, into an array, before any is
-- deleted (migration 0077).
CREATE FUNCTION app.erase_tenant_rows(target text, batch integer) RETURNS bigint
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
    IF target IS NULL OR target NOT IN ('idempotency_keys', 'webhook_deliveries', 'webhook_subscriptions', 'outbox',
                                        'ingress_rejections', 'execution_events', 'work_items', 'work_pollers',
                                        'step_attempts', 'execution_steps', 'task_token_keys', 'intent_versions',
                                        'intents', 'tenant_policies', 'rate_buckets', 'tenant_locks', 'modules',
                                        'audit_outbox', 'audit_events') THEN
        RAISE EXCEPTION 'not a tenant table erased in batches: %', target USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE pg_catalog.format(
        'DELETE FROM app.%1$I d WHERE d.tenant_id = $1'
        ' AND d.ctid = ANY (ARRAY(SELECT s.ctid FROM app.%1$I s WHERE s.tenant_id = $1 LIMIT $2))',
        target)
        USING tenant, batch;
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

-- Up to `batch` executions of the pinned tenant (their children's rows gone first); their ids, which are their
-- orchestrations' instance ids. Only executions no other execution of the tenant names (as its parent, the execution
-- it retries or its root): a batch never deletes one whose child stays, which its foreign keys would refuse.
CREATE FUNCTION app.erase_tenant_executions(batch integer) RETURNS SETOF uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    tenant uuid := app.current_tenant_id();
BEGIN
    IF tenant IS NULL THEN
        RETURN;  -- no tenant pinned: nothing is anyone's to delete
    END IF;
    RETURN QUERY
        DELETE FROM app.executions d WHERE d.tenant_id = tenant
           AND d.id = ANY (ARRAY(
               SELECT s.id FROM app.executions s WHERE s.tenant_id = tenant
                  -- One anti-join per reference (each may be hashed; one with an OR is a scan per execution).
                  AND NOT EXISTS (SELECT 1 FROM app.executions c
                                   WHERE c.tenant_id = tenant AND c.parent_execution_id = s.id AND c.id <> s.id)
                  AND NOT EXISTS (SELECT 1 FROM app.executions c
                                   WHERE c.tenant_id = tenant AND c.retry_of = s.id AND c.id <> s.id)
                  AND NOT EXISTS (SELECT 1 FROM app.executions c
                                   WHERE c.tenant_id = tenant AND c.root_execution_id = s.id AND c.id <> s.id)
                LIMIT batch))
        RETURNING d.id;
END
$$;

REVOKE ALL ON FUNCTION app.erase_tenant_rows(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION app.erase_tenant_executions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.erase_tenant_rows(text, integer) TO qp_platform;
GRANT EXECUTE ON FUNCTION app.erase_tenant_executions(integer) TO qp_platform;
