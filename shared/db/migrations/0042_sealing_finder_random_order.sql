-- intent_ref: platform.hardening
-- The sealing timer's finder (migrations 0031, 0039) named the first `max_tenants` tenants by id. A tenant whose
-- value does not open (sealed under a key this deployment no longer holds) stays to be sealed, so it came first on
-- every run, and once `max_tenants` of them did, the tenants after them by id were never sealed. The tenants now come
-- in random order, as the stuck-execution finder's do (migration 0014): every tenant with something to seal is taken
-- by a run sooner or later. Otherwise unchanged (ADR 0040, amended 2026-12-06); VOLATILE for random().

CREATE OR REPLACE FUNCTION app.tenants_with_secrets_to_seal(sealed_prefix text, max_tenants integer)
    RETURNS SETOF uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    wanted_key text;
BEGIN
    -- A shorter or longer prefix is how the secret leaked; 16 hex digits is the only key id shared/sealing.py makes.
    IF sealed_prefix IS NULL OR sealed_prefix !~ '^qpsealed1\.[0-9a-f]{16}\.$' THEN
        RAISE EXCEPTION 'the prefix must be one sealing key''s whole prefix, qpsealed1.<16 hex digits>.'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    wanted_key := pg_catalog.split_part(sealed_prefix, '.', 2);
    RETURN QUERY
    SELECT found.tenant_id FROM (
        SELECT s.tenant_id FROM app.webhook_subscriptions s
         WHERE NOT (pg_catalog.split_part(s.secret, '.', 1) = 'qpsealed1'
                    AND pg_catalog.split_part(s.secret, '.', 2) = wanted_key)
        UNION
        SELECT k.tenant_id FROM app.task_token_keys k
         WHERE k.sealed_secret IS NULL
            OR NOT (pg_catalog.split_part(k.sealed_secret, '.', 1) = 'qpsealed1'
                    AND pg_catalog.split_part(k.sealed_secret, '.', 2) = wanted_key)
    ) AS found
     ORDER BY pg_catalog.random()
     LIMIT max_tenants;
END
$$;
REVOKE ALL ON FUNCTION app.tenants_with_secrets_to_seal(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.tenants_with_secrets_to_seal(text, integer) TO qp_platform;
