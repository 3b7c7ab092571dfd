-- intent_ref: platform.tenants
-- A tenant's export is a job (ADR 0012, amended 2026-12-07: the export is a job).
--
-- The export copied every blob of the tenant through the host inside the HTTP request: past the front end's limit
-- (about 230 s in Azure) the caller was answered nothing while the export went on, and a retry wrote a second copy.
-- Now the request records a job here and answers 202; the timer `tenant_exports` claims queued jobs (and running ones
-- whose lease went stale: a host killed mid-export) with FOR UPDATE SKIP LOCKED, runs the export outside any
-- transaction, renewing its lease, and records the outcome. One export of a tenant at a time: a request while one is
-- queued or running is answered with that job (the partial unique index below). A control-plane table: no tenant role
-- reaches the schema. The tenant's erasure deletes its jobs; the foreign key's cascade is the backstop, so no job
-- outlives its tenant row.

CREATE TABLE control.tenant_export_jobs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- A request takes the tenant row's KEY SHARE through this key: an erasure's row delete waits for it, then its
    -- cascade (and its own delete before it) removes the job.
    tenant_id     uuid NOT NULL REFERENCES app.tenants (id) ON DELETE CASCADE,
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    -- The operator who asked (`<tid>/<oid>`).
    requested_by  text NOT NULL CHECK (pg_catalog.char_length(requested_by) <= 512),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    -- The first attempt's start, and the outcome's time.
    started_at    timestamptz,
    finished_at   timestamptz,
    -- Attempts begun; an attempt's updates are fenced by its number, so a late one changes nothing of the next.
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- While running: renewed by the attempt; past it, the attempt is taken for dead and the job claimed again.
    lease_until   timestamptz,
    -- The folder the current (or last) attempt writes, recorded before it writes anything: a retry removes it first.
    folder        text CHECK (pg_catalog.char_length(folder) <= 1024),
    -- When succeeded: container, blob_name, manifest, counts, blobs, blob_bytes (the folder is above).
    result        jsonb,
    -- When failed: a short kind (`tenant-gone`, `storage-unavailable`, ...), never an error's text.
    failure       text CHECK (pg_catalog.char_length(failure) <= 64),
    CONSTRAINT tenant_export_jobs_running_leased CHECK (status <> 'running' OR lease_until IS NOT NULL)
);
CREATE UNIQUE INDEX tenant_export_jobs_one_at_a_time
    ON control.tenant_export_jobs (tenant_id) WHERE status IN ('queued', 'running');
CREATE INDEX tenant_export_jobs_due
    ON control.tenant_export_jobs (requested_at, id) WHERE status IN ('queued', 'running');
CREATE INDEX tenant_export_jobs_by_tenant ON control.tenant_export_jobs (tenant_id, requested_at DESC, id DESC);

GRANT SELECT, INSERT, UPDATE, DELETE ON control.tenant_export_jobs TO qp_platform;
