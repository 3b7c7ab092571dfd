-- intent_ref: platform.idempotency
-- Expired idempotency keys are deleted, not only forgotten when their key comes again: a key's stored answer can
-- hold what must not outlive it (a webhook subscription's signing secret, kept for a retry of its create), and the
-- tables would otherwise grow with every keyed request. A timer finds the tenants with expired keys through this
-- function and deletes them in each tenant's own transaction (as migrations 0013/0014/0019: the function's owner
-- gets a SELECT policy of its own on expired keys, which the app can never use, ADR 0002).
CREATE INDEX idempotency_keys_expiry ON app.idempotency_keys (expires_at);
CREATE INDEX control_idempotency_keys_expiry ON control.idempotency_keys (expires_at);

DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY expired_key_tenants ON app.idempotency_keys FOR SELECT TO %I USING (expires_at < now())',
        current_user);
END
$$;

CREATE FUNCTION app.idempotency_expired_tenants(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT k.tenant_id FROM app.idempotency_keys k
     WHERE k.expires_at < pg_catalog.now()
     GROUP BY k.tenant_id
     ORDER BY pg_catalog.min(k.expires_at)
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.idempotency_expired_tenants(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.idempotency_expired_tenants(integer) TO qp_platform;
