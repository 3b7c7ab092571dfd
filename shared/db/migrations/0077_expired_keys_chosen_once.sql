-- intent_ref: platform.idempotency
-- The expiry timer's batch of a tenant's expired idempotency keys holds at most its `max_keys` whatever the plan
-- (migration 0046's function, replaced).
--
-- As `(tenant_id, key) IN (SELECT … LIMIT max_keys FOR UPDATE SKIP LOCKED)` the planner may rescan the subquery once
-- per outer row (a nested loop), and each rescan skips the keys the delete has just removed and takes the next ones:
-- a batch of 7 deleted all 30 of a tenant's keys, so a run's transactions were bounded by nothing. The keys are now
-- chosen once, into an array, before any is deleted.
CREATE OR REPLACE FUNCTION app.delete_expired_idempotency_keys(max_keys integer) RETURNS bigint
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
    DELETE FROM app.idempotency_keys k
     WHERE k.tenant_id = tenant
       AND k.key = ANY(ARRAY(SELECT e.key FROM app.idempotency_keys e
                              WHERE e.tenant_id = tenant AND e.expires_at < pg_catalog.now()
                              ORDER BY e.expires_at LIMIT max_keys FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;
