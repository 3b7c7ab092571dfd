-- intent_ref: platform.tenants
-- A tenant's erasure marks its row before anything of it goes (ADR 0012, amended 2026-12-07).
--
-- The erasure checked that the tenant was suspended once, on an unlocked read, and then purged its orchestrations,
-- deleted its blobs, its audit trail and its rows: an operator who set the tenant active meanwhile was answered 200,
-- and the erasure then deleted an active tenant for good. Now the erasure first sets `erasing_since`, in a short
-- transaction of its own under the row's lock (the one a status change takes), refusing a tenant that is not
-- suspended; the control plane refuses every status change while the mark is set (409 `tenant-erasing`), and the
-- row deletion looks again, under
-- its own lock, that the tenant is still suspended and marked. Nothing clears the mark: an erasure begun is
-- irreversible, and one that failed or was interrupted is sent again (it is idempotent) until the row is gone.
--
-- The check is the belt under the control plane's refusal: no write, by any release, can make a marked tenant active.
-- Every stored row has no mark, so the check holds as it is added (the table is small: one row per tenant).
--
-- Grants unchanged: the control plane (qp_platform) updates the whole row (migration 0004), so it sets the mark; the
-- runtime updates `settings` and `updated_at` only (migration 0035), so a tenant's own transaction can neither set
-- nor clear it.
ALTER TABLE app.tenants ADD COLUMN erasing_since timestamptz;
ALTER TABLE app.tenants ADD CONSTRAINT tenants_erasing_suspended
    CHECK (erasing_since IS NULL OR status = 'suspended');
