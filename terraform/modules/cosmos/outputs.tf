# intent_ref: platform.estate
output "id" {
  description = "Id of the Cosmos DB account."
  value       = azurerm_cosmosdb_account.main.id
}

output "name" {
  description = "Name of the Cosmos DB account."
  value       = azurerm_cosmosdb_account.main.name
}

output "endpoint" {
  description = "Account endpoint (QP_COSMOS_ENDPOINT)."
  value       = azurerm_cosmosdb_account.main.endpoint
}
