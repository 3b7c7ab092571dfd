-- intent_ref: platform.tenants
-- Tenant erasure (offboarding): the control plane may delete one tenant's rows, and only delete them.
--
-- qp_platform gets DELETE (never SELECT) on the tenant tables, with a DELETE policy bound to app.tenant_id,
-- so an erasure runs in the erased tenant's context and can reach no other tenant's rows.

GRANT DELETE ON app.tenants TO qp_platform;

GRANT DELETE ON app.intent_versions, app.intents, app.tenant_policies, app.rate_buckets TO qp_platform;
CREATE POLICY platform_erase ON app.intent_versions FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY platform_erase ON app.intents FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY platform_erase ON app.tenant_policies FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY platform_erase ON app.rate_buckets FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));

-- The audit trail is append-only for everyone but the erasure, which keeps only its own record: rows recorded
-- before the erasure began go, the erasure's record (written after) stays.
GRANT DELETE ON app.audit_events TO qp_platform;
CREATE POLICY platform_erase ON app.audit_events FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
