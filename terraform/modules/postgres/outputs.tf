# intent_ref: platform.estate
output "id" {
  description = "Id of the server."
  value       = azurerm_postgresql_flexible_server.main.id
}

output "name" {
  description = "Name of the server."
  value       = azurerm_postgresql_flexible_server.main.name
}

output "fqdn" {
  description = "Private FQDN of the server."
  value       = azurerm_postgresql_flexible_server.main.fqdn
}

output "database_name" {
  description = "Name of the application database."
  value       = azurerm_postgresql_flexible_server_database.main.name
}
