# intent_ref: platform.estate
output "id" {
  description = "Id of the storage account."
  value       = azurerm_storage_account.main.id
}

output "name" {
  description = "Name of the storage account."
  value       = azurerm_storage_account.main.name
}

output "blob_endpoint" {
  description = "Blob endpoint (QP_BLOB_ACCOUNT_URL)."
  value       = azurerm_storage_account.main.primary_blob_endpoint
}
