# intent_ref: platform.estate
output "log_analytics_workspace_id" {
  description = "Id of the Log Analytics workspace."
  value       = azurerm_log_analytics_workspace.main.id
}

output "app_insights_id" {
  description = "Id of the Application Insights component."
  value       = azurerm_application_insights.main.id
}

output "app_insights_name" {
  description = "Name of the Application Insights component."
  value       = azurerm_application_insights.main.name
}

output "app_insights_connection_string" {
  description = "Connection string (not a secret: ingestion requires an Entra token)."
  value       = azurerm_application_insights.main.connection_string
  sensitive   = true
}
