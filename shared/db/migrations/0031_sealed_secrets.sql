-- intent_ref: platform.hardening
-- Secrets sealed at rest (ADR 0040). A webhook subscription's signing secret and a tenant's task-token key were kept
-- in plain text: whoever could read the table (a backup, a replica, a support query) could sign webhooks and task
-- tokens in the tenant's name. They are kept sealed now: AES-256-GCM under a key that lives outside the database
-- (QP_SEALING_KEY, a Key Vault secret in Azure), each value bound to its purpose, tenant and row, so that a sealed
-- value copied to another row or tenant does not open. The app seals every new secret; the sealing timer seals
-- those stored before this migration, and seals again those of a previous key after a rotation. Until then a
-- plain-text value is still read as it is.

ALTER TABLE app.webhook_subscriptions DROP CONSTRAINT webhook_subscriptions_secret_check;
ALTER TABLE app.webhook_subscriptions ADD CONSTRAINT webhook_subscriptions_secret_check
    CHECK (secret LIKE 'qpsealed1.%' OR secret LIKE 'whsec\_%');

-- The key was bytes; a sealed key is text, in a column of its own. Exactly one of the two is kept.
ALTER TABLE app.task_token_keys
    ADD COLUMN sealed_secret text CHECK (sealed_secret LIKE 'qpsealed1.%'),
    ALTER COLUMN secret DROP NOT NULL,
    ADD CONSTRAINT task_token_keys_one_secret CHECK ((secret IS NULL) <> (sealed_secret IS NULL));
GRANT UPDATE (secret, sealed_secret) ON app.task_token_keys TO qp_runtime;

-- The tenants that still keep a secret not sealed with the current key (its prefix), for the sealing timer: ids
-- only, as the other cross-tenant finders return (migrations 0019, 0025); as there, the function's owner gets a
-- SELECT policy of its own on the two tables, which the app can never use (ADR 0002).
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY secrets_to_seal ON app.webhook_subscriptions FOR SELECT TO %I USING (true)', current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY secrets_to_seal ON app.task_token_keys FOR SELECT TO %I USING (true)', current_user);
END
$$;

CREATE FUNCTION app.tenants_with_secrets_to_seal(sealed_prefix text, max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT found.tenant_id FROM (
        SELECT s.tenant_id FROM app.webhook_subscriptions s
         WHERE NOT pg_catalog.starts_with(s.secret, sealed_prefix)
        UNION
        SELECT k.tenant_id FROM app.task_token_keys k
         WHERE k.sealed_secret IS NULL OR NOT pg_catalog.starts_with(k.sealed_secret, sealed_prefix)
    ) AS found
     ORDER BY found.tenant_id
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.tenants_with_secrets_to_seal(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.tenants_with_secrets_to_seal(text, integer) TO qp_platform;
