# intent_ref: platform.estate
# The same outputs as bicep/main.bicep (azd reads them as environment values).

output "AZURE_LOCATION" {
  description = "Azure region of the estate."
  value       = var.location
}

output "AZURE_TENANT_ID" {
  description = "Entra tenant of the API app registration."
  value       = var.entra_tenant_id
}

output "AZURE_RESOURCE_GROUP" {
  description = "Resource group holding the estate."
  value       = azurerm_resource_group.main.name
}

output "RESOURCE_TOKEN" {
  description = "Suffix of the globally unique names."
  value       = var.resource_token
}

output "FUNCTION_APP_NAME" {
  description = "Name of the function app."
  value       = module.functionapp.name
}

output "FUNCTION_APP_STAGING_HOSTNAME" {
  description = "Host name of the staging slot."
  value       = module.functionapp.staging_host_name
}

output "API_GATEWAY_URL" {
  description = "Public base URL of the API (API Management gateway)."
  value       = module.apim.gateway_url
}

output "MANAGED_IDENTITY_NAME" {
  description = "Name of the function app identity (also its Postgres login)."
  value       = module.identity.name
}

output "MANAGED_IDENTITY_CLIENT_ID" {
  description = "Client id of the function app identity."
  value       = module.identity.client_id
}

output "CONTROL_IDENTITY_NAME" {
  description = "Name of the control plane's identity (also its Postgres login, member of qp_platform)."
  value       = module.control_identity.name
}

output "CONTROL_IDENTITY_CLIENT_ID" {
  description = "Client id of the control plane's identity."
  value       = module.control_identity.client_id
}

output "POSTGRES_FQDN" {
  description = "Private FQDN of the Postgres server."
  value       = module.postgres.fqdn
}

output "POSTGRES_DATABASE" {
  description = "Name of the application database."
  value       = module.postgres.database_name
}

output "COSMOS_ENDPOINT" {
  description = "Cosmos DB account endpoint."
  value       = module.cosmos.endpoint
}

output "STORAGE_BLOB_ENDPOINT" {
  description = "Blob endpoint of the storage account."
  value       = module.storage.blob_endpoint
}

output "EVENTHUB_NAMESPACE_FQDN" {
  description = "Fully qualified Event Hubs namespace."
  value       = "${module.eventhubs.name}.servicebus.windows.net"
}

output "APPLICATIONINSIGHTS_NAME" {
  description = "Name of the Application Insights component."
  value       = module.monitoring.app_insights_name
}

output "DURABLE_TASK_SCHEDULER_ENDPOINT" {
  description = "Endpoint of the Durable Task Scheduler (ADR 0024)."
  value       = module.durabletask.endpoint
}
