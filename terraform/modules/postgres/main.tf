# intent_ref: platform.estate
# PostgreSQL Flexible Server: Entra-only authentication, VNet-injected (no public endpoint), the `quantum`
# database. The roles the migrations expect and the logins of the app's two identities (runtime: qp_runtime;
# control: qp_platform, ADR 0018) are created afterwards by the bootstrap in docs/runbooks/deploy.md, run by the
# Entra administrator set here. Neither identity is an administrator.

resource "azurerm_postgresql_flexible_server" "main" {
  #checkov:skip=CKV2_AZURE_57:the server is VNet-injected (delegated subnet, private DNS zone, public access off): a private endpoint would add nothing
  name                = var.name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  version             = "16"
  sku_name            = var.sku_name
  storage_mb          = var.storage_size_gb * 1024
  auto_grow_enabled   = true

  # Entra only: there is no administrator password to store, leak or rotate.
  authentication {
    active_directory_auth_enabled = true
    password_auth_enabled         = false
    tenant_id                     = var.entra_tenant_id
  }

  backup_retention_days = var.backup_retention_days
  # Geo-redundant backups let a regional outage be restored elsewhere (docs/runbooks/disaster-recovery.md).
  geo_redundant_backup_enabled = true

  # VNet injection is the private path; the server has no public endpoint at all.
  delegated_subnet_id           = var.delegated_subnet_id
  private_dns_zone_id           = var.private_dns_zone_ids["postgres"]
  public_network_access_enabled = false

  dynamic "high_availability" {
    for_each = var.high_availability ? [1] : []
    content {
      mode = "ZoneRedundant"
    }
  }

  lifecycle {
    ignore_changes = [zone, high_availability[0].standby_availability_zone]
  }
}

resource "azurerm_postgresql_flexible_server_active_directory_administrator" "main" {
  server_name         = azurerm_postgresql_flexible_server.main.name
  resource_group_name = var.resource_group_name
  tenant_id           = var.entra_tenant_id
  object_id           = var.admin_object_id
  principal_name      = var.admin_principal_name
  principal_type      = var.admin_principal_type
}

resource "azurerm_postgresql_flexible_server_database" "main" {
  name      = var.database_name
  server_id = azurerm_postgresql_flexible_server.main.id
  charset   = "UTF8"
  collation = "en_US.utf8"

  depends_on = [azurerm_postgresql_flexible_server_active_directory_administrator.main]
}

resource "azurerm_monitor_diagnostic_setting" "main" {
  name                       = "diag-log"
  target_resource_id         = azurerm_postgresql_flexible_server.main.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category_group = "allLogs"
  }

  metric {
    category = "AllMetrics"
  }
}
