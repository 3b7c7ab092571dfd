# intent_ref: platform.estate
output "id" {
  description = "Resource id of the identity."
  value       = azurerm_user_assigned_identity.main.id
}

output "name" {
  description = "Name of the identity (also its Postgres login)."
  value       = azurerm_user_assigned_identity.main.name
}

output "client_id" {
  description = "Client id of the identity."
  value       = azurerm_user_assigned_identity.main.client_id
}

output "principal_id" {
  description = "Principal (object) id of the identity."
  value       = azurerm_user_assigned_identity.main.principal_id
}
