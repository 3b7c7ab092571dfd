-- intent_ref: platform.tenants
-- A tenant's poller rows reference its tenant row, as the other tenant tables but the audit trail's do (ADR 0012).
--
-- The erasure locks the tenant row (FOR UPDATE) so that a writer adding a row that names the tenant waits for it and
-- then finds the tenant gone. `work_pollers` had no such reference (migration 0018): a worker's poll that added a row
-- while the erasure held the tenant row did not wait, and committed after the erasure's delete had read the table, so
-- the row of an erased tenant stayed. With the foreign key, that poll waits on the tenant row and is refused once the
-- erasure has committed (`work_pollers_tenant_id_fkey`, answered 401 as an unknown tenant's, ADR 0012). A poll that
-- renews a row changes no tenant_id, so a steady poll takes no lock on the tenant row.
--
-- `audit_events` and `audit_outbox` keep theirs out on purpose (migrations 0005, 0028): the erasure's own record
-- outlives the tenant row; migration 0041 holds the runtime role's records to an existing tenant instead.

-- No poll adds a row until the reference is in place: a row of a tenant erased meanwhile would fail its validation.
LOCK TABLE app.work_pollers IN SHARE ROW EXCLUSIVE MODE;

-- Rows left behind by that race name a tenant that is gone; they say nothing anyone can read. The owner reads and
-- deletes no tenant row under FORCE ROW LEVEL SECURITY, so it gets policies for this statement alone.
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE POLICY migration_0058_tenants ON app.tenants FOR SELECT TO %I USING (true)', current_user);
    EXECUTE pg_catalog.format(
        'CREATE POLICY migration_0058_orphans ON app.work_pollers FOR ALL TO %I USING (true)', current_user);
END
$$;
DELETE FROM app.work_pollers p WHERE NOT EXISTS (SELECT 1 FROM app.tenants t WHERE t.id = p.tenant_id);
DROP POLICY migration_0058_orphans ON app.work_pollers;
DROP POLICY migration_0058_tenants ON app.tenants;

-- Named as Postgres names every other reference to the tenant row: a violation of it is told from a bug by its name.
-- Validated as it is added: the file runs in one transaction, which holds the table's lock either way, and the table
-- is small (trimmed, migration 0045).
ALTER TABLE app.work_pollers
    ADD CONSTRAINT work_pollers_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES app.tenants (id);
