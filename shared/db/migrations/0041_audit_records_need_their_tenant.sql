-- intent_ref: platform.audit
-- The runtime role adds audit records of existing tenants only (ADR 0012, amended 2026-12-06).
--
-- An erased tenant keeps one record: its erasure's. Yet for as long as an instance's tenant directory still cached
-- the tenant (5 s) after an erasure on another instance, each request of the erased tenant's tokens wrote a deny
-- record into its trail, which so grew again. Whatever an instance caches, a record the runtime role adds (to the
-- Postgres store's table or to the audit outbox) now needs its tenant's row. The check joins the restrictive tenant
-- isolation policy (migration 0001), the runtime role's policy on every write, which any permissive policy added later
-- cannot widen.
--
-- The erasure's own record, written once the tenant's row is gone, is the control plane's: its policies on records
-- about tenants (migration 0028) are unchanged and take it.

-- The runtime role may not update a record (migration 0005): this check is on what it adds.
ALTER POLICY tenant_isolation_restrictive ON app.audit_events
    WITH CHECK (tenant_id = (SELECT app.current_tenant_id())
                AND EXISTS (SELECT 1 FROM app.tenants t WHERE t.id = audit_events.tenant_id));

-- The runtime role's one update of a waiting record sets it aside (migration 0028), which the relay may still have
-- to do for a record of a tenant erased meanwhile: a record set aside is never copied, so it needs no tenant.
ALTER POLICY tenant_isolation_restrictive ON app.audit_outbox
    WITH CHECK (tenant_id = (SELECT app.current_tenant_id())
                AND (refused_at IS NOT NULL
                     OR EXISTS (SELECT 1 FROM app.tenants t WHERE t.id = audit_outbox.tenant_id)));
