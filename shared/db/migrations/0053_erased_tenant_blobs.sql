-- intent_ref: platform.tenants
-- The erased tenants whose blobs are still looked for (ADR 0046).
--
-- An erasure deletes the tenant's blobs before its rows and once more after them, and a writer that finds its tenant
-- gone after its upload removes its blob itself. When blob storage failed either removal, the blob outlived the
-- tenant for ever: the tenant being gone, nothing could ask for it again, and an ERROR line was all that was left.
-- The erasure now records the tenant here in the transaction that deletes its row, and a writer whose removal fails
-- records it again; the timer `erased_tenant_blobs` deletes what is left under the tenant's prefix until it is empty,
-- and drops the record once it has been empty for a pass made seven days after the last note. A control-plane table:
-- no tenant is pinned (the tenant is gone), and no tenant role reaches the schema.

CREATE TABLE control.erased_tenant_blobs (
    tenant_id  uuid PRIMARY KEY,
    -- When the erasure recorded the tenant (its row's delete committed with it).
    erased_at  timestamptz NOT NULL DEFAULT now(),
    -- The last time a blob was reported left (the erasure, or a writer whose removal failed): the record is kept at
    -- least seven days after it, and a sweep that read an earlier one drops nothing.
    noted_at   timestamptz NOT NULL DEFAULT now(),
    -- The last sweep of the prefix, and why it failed (NULL: it emptied the prefix); a sweep takes the oldest first.
    swept_at   timestamptz,
    failure    text CHECK (pg_catalog.char_length(failure) <= 2000)
);
CREATE INDEX erased_tenant_blobs_sweep_order ON control.erased_tenant_blobs (swept_at NULLS FIRST, erased_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON control.erased_tenant_blobs TO qp_platform;
