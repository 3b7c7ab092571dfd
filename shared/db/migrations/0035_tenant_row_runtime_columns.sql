-- intent_ref: platform.tenants
-- A tenant's own transaction changes only its own settings (ADR 0002, amended 2026-12-05). Migration 0002 granted
-- the runtime UPDATE on the whole tenant row, and row-level security limits rows, not columns: SQL running in a
-- tenant's transaction could lift its own suspension, quotas, allow-lists and gates, or re-map its Entra tenant,
-- all of which only the control plane (qp_platform) decides. The runtime's one update merges `settings`.
REVOKE UPDATE ON app.tenants FROM qp_runtime;
GRANT UPDATE (settings, updated_at) ON app.tenants TO qp_runtime;
