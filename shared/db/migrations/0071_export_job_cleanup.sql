-- intent_ref: platform.tenants
-- Export folders still to be removed (ADR 0012, amended 2026-12-07: review of the export job).
--
-- A failed export's removal of its folder could fail (storage unavailable), and a retry's removal of a killed
-- attempt's folder likewise; the folder's name was then only in a log, and its blobs stayed. Now every attempt's folder
-- is listed here when the attempt begins, before anything is written, and leaves the list when the attempt succeeds;
-- the `tenant_exports` timer removes the folders of the list first in every run (any job of any tenant, a few per
-- run) and drops a name once its folder is listed empty and its writer has surely stopped. Bounded: one folder per
-- attempt, and a job has at most a few attempts.

ALTER TABLE control.tenant_export_jobs
    ADD COLUMN cleanup_folders text[] NOT NULL DEFAULT '{}'
        CONSTRAINT tenant_export_jobs_cleanup_bounded CHECK (pg_catalog.cardinality(cleanup_folders) <= 8);
CREATE INDEX tenant_export_jobs_cleanup
    ON control.tenant_export_jobs (id) WHERE pg_catalog.cardinality(cleanup_folders) > 0;
