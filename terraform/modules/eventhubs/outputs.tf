# intent_ref: platform.estate
output "id" {
  description = "Id of the namespace."
  value       = azurerm_eventhub_namespace.main.id
}

output "hub_ids" {
  description = "Id of each hub by name: the scopes of the function identity's Event Hubs roles."
  value       = { for name, hub in azurerm_eventhub.main : name => hub.id }
}

output "name" {
  description = "Name of the namespace."
  value       = azurerm_eventhub_namespace.main.name
}
