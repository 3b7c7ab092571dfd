# intent_ref: platform.estate
output "id" {
  description = "Id of the namespace."
  value       = azurerm_eventhub_namespace.main.id
}

output "name" {
  description = "Name of the namespace."
  value       = azurerm_eventhub_namespace.main.name
}
