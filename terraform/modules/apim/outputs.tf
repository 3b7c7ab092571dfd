# intent_ref: platform.estate
output "id" {
  description = "Id of the API Management service."
  value       = azurerm_api_management.main.id
}

output "principal_id" {
  description = "Principal id of the gateway's system-assigned identity."
  value       = azurerm_api_management.main.identity[0].principal_id
}

output "gateway_url" {
  description = "Public base URL of the gateway."
  value       = azurerm_api_management.main.gateway_url
}
