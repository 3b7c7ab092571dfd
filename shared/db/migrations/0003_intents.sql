-- intent_ref: platform.tenant-isolation
-- Intents and blueprints with their immutable versions; every key is composite (tenant_id, ...).

CREATE TABLE app.intents (
    tenant_id        uuid NOT NULL REFERENCES app.tenants (id),
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    -- Blueprints are versioned exactly like intents and share this table and its rules.
    kind             text NOT NULL DEFAULT 'intent' CHECK (kind IN ('intent', 'blueprint')),
    name             text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    description      text NOT NULL DEFAULT '',
    labels           jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(labels) = 'object'),
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    current_version  integer NOT NULL DEFAULT 1 CHECK (current_version >= 1),
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    archived_at      timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, kind, name)
);

CREATE TABLE app.intent_versions (
    tenant_id         uuid NOT NULL,
    intent_id         uuid NOT NULL,
    version           integer NOT NULL CHECK (version >= 1),
    description       text NOT NULL DEFAULT '',
    labels            jsonb NOT NULL DEFAULT '{}'::jsonb,
    definition        jsonb NOT NULL CHECK (jsonb_typeof(definition) = 'object'),
    definition_sha256 text NOT NULL,
    -- How this version came to be: {"kind": "create"|"update"|"rollback", "from_version": n}.
    origin            jsonb NOT NULL DEFAULT '{"kind": "create"}'::jsonb,
    -- The blueprint version a declaration was validated against: {"id": ..., "version": n}.
    blueprint_ref     jsonb,
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, intent_id, version),
    FOREIGN KEY (tenant_id, intent_id) REFERENCES app.intents (tenant_id, id)
);

CREATE INDEX intents_tenant_kind_status_name ON app.intents (tenant_id, kind, status, name);
CREATE INDEX intents_labels ON app.intents USING gin (labels jsonb_path_ops);

SELECT app.enable_tenant_isolation('app.intents');
SELECT app.enable_tenant_isolation('app.intent_versions');

-- Versions are immutable: the runtime role may add them, never change or remove them.
GRANT SELECT, INSERT, UPDATE ON app.intents TO qp_runtime;
GRANT SELECT, INSERT ON app.intent_versions TO qp_runtime;
