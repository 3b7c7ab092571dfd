-- intent_ref: platform.tenants
-- The orchestrations that may outlive their erased tenant, purged by the sweeper until gone (ADR 0046, amended
-- 2026-12-07; ADR 0014).
--
-- A start the sweeper cut off by its bound may still be applied by the task hub, for as long as the client would
-- have waited (240 s). The sweeper looked at the tenant once, straight after the cut-off: a tenant erased by then
-- was purged of nothing (the instance not there yet), and the start landing later left an orchestration, its history
-- holding the tenant's input, that nothing ever looked at again. So is one whose purge an erased start could not
-- finish (a terminate cut off, a settle run out). Each is recorded here, due once a late start could have landed; the
-- sweeper then terminates and purges it while its tenant is gone, and drops the record once it is gone (or once its
-- tenant is found there: that tenant's own erasure lists and purges it as any of its executions). A control-plane
-- table: no tenant is pinned (the tenant may be gone), and no tenant role reaches the schema.

CREATE TABLE control.erased_tenant_orchestrations (
    -- The orchestration's instance id: its execution's id.
    instance_id uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    -- The last note: a record is dropped only as the sweep read it, so a note since keeps it.
    noted_at    timestamptz NOT NULL DEFAULT now(),
    -- Not purged before it: a start cut off may land until then.
    due_at      timestamptz NOT NULL DEFAULT now(),
    -- The last purge tried, and why it failed (NULL: none failed yet); the least recently tried go first.
    swept_at    timestamptz,
    failure     text CHECK (pg_catalog.char_length(failure) <= 2000)
);
CREATE INDEX erased_tenant_orchestrations_sweep_order
    ON control.erased_tenant_orchestrations (swept_at NULLS FIRST, due_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON control.erased_tenant_orchestrations TO qp_platform;
