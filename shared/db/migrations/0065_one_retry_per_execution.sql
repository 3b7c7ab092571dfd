-- intent_ref: platform.execution
-- An execution is retried once (ADR 0014, amended 2026-12-07).
--
-- Nothing kept a failed execution from being retried again: two retries of it both started and both ran every step
-- after the reused ones (each side effect twice), and a second retry reused outputs that the first retry's
-- compensation had undone. The retry route now refuses a second retry (409 `already-retried`), decided under the
-- tenant's start lock; this index is the belt under that check, and what its lookup of an execution's retry reads.
--
-- Unique where the stored rows allow it: executions retried twice before this release stay as they are (nothing is
-- deleted or relinked), and then the index is built non-unique, so that the migration applies to any stored data and
-- the route's check, which does not rely on the index, still refuses every new second retry. The unique build is
-- tried first in a block of its own: a duplicate rolls back only that build. Not checked beforehand with a query:
-- FORCE ROW LEVEL SECURITY binds the migrating role too, and it would see no tenant's rows, while the build sees all.
-- Built in the migration's transaction (writes to executions wait for one read of the table, reads do not); only the
-- rows with a retry_of are indexed, a small part of the table.
DO $$
BEGIN
    BEGIN
        CREATE UNIQUE INDEX executions_one_retry ON app.executions (tenant_id, retry_of) WHERE retry_of IS NOT NULL;
    EXCEPTION WHEN unique_violation THEN
        RAISE WARNING 'executions retried more than once are stored: executions_one_retry is built non-unique';
        CREATE INDEX executions_one_retry ON app.executions (tenant_id, retry_of) WHERE retry_of IS NOT NULL;
    END;
END
$$;
