-- intent_ref: platform.tenant-isolation
-- The control plane role and per-tenant policies.
--
-- qp_platform is what Platform.Admin requests run as: it may read and manage tenant rows and nothing else,
-- so "Platform.Admin sees no tenant's data" is enforced by the database, not by convention.

GRANT USAGE ON SCHEMA app TO qp_platform;
GRANT EXECUTE ON FUNCTION app.current_tenant_id() TO qp_platform;
GRANT SELECT, INSERT, UPDATE ON app.tenants TO qp_platform;
-- qp_platform is not a member of qp_runtime, so the restrictive tenant policy does not apply to it; any login
-- that is a member of both (without SET ROLE) stays bound by that restrictive policy.
CREATE POLICY platform_control_plane ON app.tenants FOR ALL TO qp_platform USING (true) WITH CHECK (true);

-- Extra Cedar policies a tenant adds to the platform's (validated against the schema on save).
CREATE TABLE app.tenant_policies (
    tenant_id   uuid NOT NULL REFERENCES app.tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    description text NOT NULL DEFAULT '',
    policy      text NOT NULL CHECK (length(policy) <= 16384),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);
SELECT app.enable_tenant_isolation('app.tenant_policies');
GRANT SELECT, INSERT, DELETE ON app.tenant_policies TO qp_runtime;
