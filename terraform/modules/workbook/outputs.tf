# intent_ref: platform.estate
output "id" {
  description = "Id of the workbook."
  value       = azurerm_application_insights_workbook.main.id
}
