-- intent_ref: platform.tenant-isolation
-- A tenant is never provisioned for the nil UUID as its Entra tenant id.
--
-- Entra never issues the nil UUID as a `tid`, and the edge refuses a token that names it, so a tenant provisioned
-- for it could never be signed in to: a placeholder left by a script, not a customer. The control plane's model
-- refuses it (422); the database refuses it too, for every path that inserts tenants without that model. NOT VALID:
-- a row stored before this is left for an operator to look at (it harms nobody, no token reaches it) rather than
-- failing the migration of a running estate.

ALTER TABLE app.tenants
    ADD CONSTRAINT tenants_entra_tenant_id_not_nil
    CHECK (entra_tenant_id <> '00000000-0000-0000-0000-000000000000'::uuid) NOT VALID;
