-- intent_ref: platform.tenant-isolation
-- Tenants: one row per customer organisation, keyed by its own id and mapped to an Entra tenant.

CREATE TABLE app.tenants (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Global uniqueness of name and Entra tenant id is deliberate: both are platform-level
    -- identifiers that only Platform.Admin assigns, so the uniqueness is no cross-tenant oracle.
    name             text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    display_name     text NOT NULL DEFAULT '',
    entra_tenant_id  uuid NOT NULL UNIQUE,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    quotas           jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(quotas) = 'object'),
    allowed_modules  text[] NOT NULL DEFAULT '{}',
    allowed_targets  text[] NOT NULL DEFAULT '{}',
    settings         jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(settings) = 'object'),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- A tenant sees its own row only; the platform's control plane gets its own path later.
SELECT app.enable_tenant_isolation('app.tenants', 'id');

GRANT SELECT, UPDATE ON app.tenants TO qp_runtime;
