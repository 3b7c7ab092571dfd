# intent_ref: platform.estate
# Log Analytics and workspace-based Application Insights, both accepting Entra-authenticated ingestion only.

resource "azurerm_log_analytics_workspace" "main" {
  name                = var.log_analytics_name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  sku                 = "PerGB2018"
  retention_in_days   = var.retention_in_days
  # Shared keys off: agents and the app authenticate with Entra.
  local_authentication_enabled = false
}

resource "azurerm_application_insights" "main" {
  name                = var.app_insights_name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  application_type    = "web"
  workspace_id        = azurerm_log_analytics_workspace.main.id
  # The connection string alone cannot write telemetry; the app sends an Entra token.
  local_authentication_disabled = true
}

resource "azurerm_monitor_diagnostic_setting" "workspace" {
  name                       = "diag-log"
  target_resource_id         = azurerm_log_analytics_workspace.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category_group = "audit"
  }

  metric {
    category = "AllMetrics"
  }
}

resource "azurerm_monitor_diagnostic_setting" "app_insights" {
  name                       = "diag-log"
  target_resource_id         = azurerm_application_insights.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  metric {
    category = "AllMetrics"
  }
}
