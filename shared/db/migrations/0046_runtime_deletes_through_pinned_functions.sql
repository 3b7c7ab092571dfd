-- intent_ref: platform.tenant-isolation
-- The runtime deletes through functions bound to the pinned tenant, and holds DELETE on no table (ADR 0002, amended
-- 2026-12-06). LOCK TABLE ignores row-level security and takes any mode up to ACCESS EXCLUSIVE with table-level
-- DELETE, as with UPDATE (migration 0044): SQL running in one tenant's transaction could lock app.audit_outbox (every
-- request's audit record goes through it) or the idempotency keys and hold up every tenant for as long as its
-- transaction lasted. Each delete the app makes is now one of the functions below, run in its tenant's transaction:
-- exactly the rows the app's statement chose, of the pinned tenant only, and nothing else (as
-- app.trim_ingress_rejections, migration 0026). The erasure (qp_platform, platform_erase) is unchanged.
--
-- FORCE ROW LEVEL SECURITY binds the functions' owner (the migrating role) too, so it gets policies of its own on
-- each table, bound to the pinned tenant as the app's are: SELECT (its WHERE reads the rows), DELETE, and UPDATE
-- where the function locks the rows it takes (FOR UPDATE applies the UPDATE policies; without one it would see no
-- row to lock). The app can never become that role (ADR 0002). Each function names the pinned tenant in its WHERE as
-- well: the owner's older SELECT policies on some of these tables (the timers' finders) see every tenant's rows.

REVOKE DELETE ON app.tenant_policies, app.audit_outbox, app.webhook_subscriptions, app.webhook_deliveries,
    app.idempotency_keys, app.modules FROM qp_runtime;
-- app.modules gets no function: the app deletes no module registration.

DO $$
DECLARE
    target text;
BEGIN
    FOREACH target IN ARRAY ARRAY['tenant_policies', 'audit_outbox', 'webhook_subscriptions', 'webhook_deliveries',
                                  'idempotency_keys']
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE POLICY delete_pinned_tenant_read ON app.%I FOR SELECT TO %I'
            ' USING (tenant_id = (SELECT app.current_tenant_id()))',
            target, current_user);
        EXECUTE pg_catalog.format(
            'CREATE POLICY delete_pinned_tenant ON app.%I FOR DELETE TO %I'
            ' USING (tenant_id = (SELECT app.current_tenant_id()))',
            target, current_user);
    END LOOP;
    -- The tables whose functions skip the rows another transaction holds (FOR UPDATE SKIP LOCKED), as the app's
    -- statements did.
    FOREACH target IN ARRAY ARRAY['audit_outbox', 'idempotency_keys']
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE POLICY delete_pinned_tenant_lock ON app.%I FOR UPDATE TO %I'
            ' USING (tenant_id = (SELECT app.current_tenant_id()))'
            ' WITH CHECK (tenant_id = (SELECT app.current_tenant_id()))',
            target, current_user);
    END LOOP;
END
$$;

-- A Tenant.Admin removes one of its policies (shared/policy/tenant_policies.py).
CREATE FUNCTION app.delete_tenant_policy(target uuid) RETURNS bigint
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
    DELETE FROM app.tenant_policies p WHERE p.tenant_id = tenant AND p.id = target;
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

-- Audit records the store now holds (or that outlived their erased tenant) leave the outbox (shared/audit/outbox.py);
-- a row another copy or an erasure holds is skipped, not waited for.
CREATE FUNCTION app.remove_audit_outbox_records(targets uuid[]) RETURNS bigint
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
    DELETE FROM app.audit_outbox o
     WHERE o.tenant_id = tenant
       AND o.id IN (SELECT k.id FROM app.audit_outbox k WHERE k.tenant_id = tenant AND k.id = ANY(targets)
                    FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

-- A Tenant.Admin removes a webhook subscription (shared/events/webhook_store.py): its deliveries first, as a sender
-- records a delivery and then its subscription (the same order keeps the two from deadlocking), then the
-- subscription; the answer is how many subscriptions went (0 or 1).
CREATE FUNCTION app.delete_webhook_subscription(target uuid) RETURNS bigint
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
    DELETE FROM app.webhook_deliveries d WHERE d.tenant_id = tenant AND d.subscription_id = target;
    DELETE FROM app.webhook_subscriptions s WHERE s.tenant_id = tenant AND s.id = target;
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

-- A claim forgets its key when it expired, so that it may be used again (shared/idempotency.py).
CREATE FUNCTION app.forget_expired_idempotency_key(expired_key text) RETURNS bigint
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
     WHERE k.tenant_id = tenant AND k.key = expired_key AND k.expires_at < pg_catalog.now();
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

-- The expiry timer deletes up to `max_keys` of the tenant's expired keys, the oldest first
-- (shared/idempotency_expiry.py); a key a request's transaction holds is skipped, not waited for.
CREATE FUNCTION app.delete_expired_idempotency_keys(max_keys integer) RETURNS bigint
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
       AND (k.tenant_id, k.key) IN (SELECT e.tenant_id, e.key FROM app.idempotency_keys e
                                     WHERE e.tenant_id = tenant AND e.expires_at < pg_catalog.now()
                                     ORDER BY e.expires_at LIMIT max_keys FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;

REVOKE ALL ON FUNCTION app.delete_tenant_policy(uuid), app.remove_audit_outbox_records(uuid[]),
    app.delete_webhook_subscription(uuid), app.forget_expired_idempotency_key(text),
    app.delete_expired_idempotency_keys(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.delete_tenant_policy(uuid), app.remove_audit_outbox_records(uuid[]),
    app.delete_webhook_subscription(uuid), app.forget_expired_idempotency_key(text),
    app.delete_expired_idempotency_keys(integer) TO qp_runtime;
