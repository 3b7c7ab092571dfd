-- intent_ref: platform.hardening
-- Two gaps of the cross-tenant machinery (ADR 0040, ADR 0012, both amended 2026-12-05).
--
-- The sealing timer's finder (migration 0031) took any prefix and answered which tenants keep a secret that does not
-- start with it. The control plane, which may read no secret, could so learn a tenant's stored secret one character
-- at a time. It now takes only the whole prefix of one key (`qpsealed1.<key id>.`, the form `Sealer.current_prefix`
-- has always passed) and compares the key id as a whole: it tells whether a value is sealed under that key, and
-- nothing of the value. The stuck-execution finder (migration 0014) likewise took any number of seconds, which timed
-- a tenant's executions to the second; its seconds are held to the sweeper's own floors.
--
-- The audit outbox relay wrote each document to the Cosmos DB partition its `tenantId` names, and nothing held that
-- to the row's tenant: SQL in one tenant's transaction, or the control plane through its policy on Tenant records
-- (migration 0028), could queue a record that landed in another tenant's trail. A waiting document must now name its
-- own row's tenant and record.

CREATE OR REPLACE FUNCTION app.tenants_with_secrets_to_seal(sealed_prefix text, max_tenants integer)
    RETURNS SETOF uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER
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
     ORDER BY found.tenant_id
     LIMIT max_tenants;
END
$$;
REVOKE ALL ON FUNCTION app.tenants_with_secrets_to_seal(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.tenants_with_secrets_to_seal(text, integer) TO qp_platform;

-- The floors are the sweeper's own (START_GRACE_S, QUIET_S in shared/engine/sweeper.py), so its answers do not
-- change; below them a caller could watch a tenant's executions move. The ceilings say nothing the sweeper needs
-- beyond a day, and turn infinity and NaN into a number.
CREATE OR REPLACE FUNCTION app.execution_sweep_tenants(stale_start_s double precision, quiet_s double precision,
                                                       max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = ''
AS $$
    SELECT e.tenant_id FROM app.executions e
     WHERE (e.status = 'pending' AND e.parent_execution_id IS NULL
            AND (e.start_claimed_at IS NULL OR e.start_claimed_at
                 < pg_catalog.clock_timestamp()
                   - pg_catalog.make_interval(secs => LEAST(GREATEST(stale_start_s, 60), 86400))))
        OR (e.status IN ('running', 'waiting', 'compensating')
            AND e.updated_at < pg_catalog.clock_timestamp()
                               - pg_catalog.make_interval(secs => LEAST(GREATEST(quiet_s, 300), 86400)))
     GROUP BY e.tenant_id
     -- Stalled starts first (they are certainly stuck); the rest in random order, so that tenants whose executions
     -- legitimately wait for days cannot keep the others out of a capped run forever.
     ORDER BY pg_catalog.bool_or(e.status = 'pending') DESC, pg_catalog.random()
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION app.execution_sweep_tenants(double precision, double precision, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.execution_sweep_tenants(double precision, double precision, integer) TO qp_platform;

-- A waiting record that names another tenant or record was queued by someone forging a trail. The trail is
-- append-only, so it is neither deleted nor rewritten: it is set aside as the relay sets aside what the store refuses
-- (migration 0028), kept for an operator and never copied. The owner may update no outbox row (FORCE ROW LEVEL
-- SECURITY), so it gets a policy for this statement alone.
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY set_aside_foreign_documents ON app.audit_outbox FOR UPDATE TO %I USING (true)', current_user);
END
$$;
UPDATE app.audit_outbox
   SET refused_at = clock_timestamp(),
       refusal = 'migration 0039: the document names another tenant or record than its row; never copied'
 WHERE refused_at IS NULL
   AND NOT (COALESCE(document ->> 'tenantId' = tenant_id::text, false)
            AND COALESCE(document ->> 'id' = id::text, true));
DROP POLICY set_aside_foreign_documents ON app.audit_outbox;

-- Only a record that may still be copied is held to it; one set aside is never copied. A document without an id is
-- let in as before: the store answers 400 for it and the relay sets it aside.
ALTER TABLE app.audit_outbox ADD CONSTRAINT audit_outbox_document_is_its_rows CHECK (
    refused_at IS NOT NULL
    OR (COALESCE(document ->> 'tenantId' = tenant_id::text, false) AND COALESCE(document ->> 'id' = id::text, true))
) NOT VALID;
ALTER TABLE app.audit_outbox VALIDATE CONSTRAINT audit_outbox_document_is_its_rows;
