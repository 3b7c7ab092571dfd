-- intent_ref: platform.idempotency
-- Idempotency keys of the control plane's creates (POST /api/v1/tenants, Platform.Admin). No tenant is pinned in a
-- control-plane transaction (the tenant to be created does not exist yet), so a key belongs to the principal that
-- sent it, and the table lives in the control plane's own schema: no tenant role can reach it, and the control
-- role reaches nothing else there.
CREATE SCHEMA IF NOT EXISTS control;
REVOKE ALL ON SCHEMA control FROM PUBLIC;
GRANT USAGE ON SCHEMA control TO qp_platform;

CREATE TABLE control.idempotency_keys (
    principal_id     text NOT NULL CHECK (length(principal_id) BETWEEN 1 AND 256),
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- What the key was first used for: method, route and a digest of the body.
    fingerprint      text NOT NULL,
    response_status  integer,
    response_body    jsonb,
    response_headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (principal_id, key)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON control.idempotency_keys TO qp_platform;
