# intent_ref: platform.estate
# The whole Quantum Platform estate, module for module the same as bicep/main.bicep.

resource "azurerm_resource_group" "main" {
  name     = local.names.resourceGroup
  location = var.location
  tags     = local.tags
}

module "monitoring" {
  source              = "./modules/monitoring"
  resource_group_name = azurerm_resource_group.main.name
  location            = var.location
  tags                = local.tags
  log_analytics_name  = local.names.logAnalytics
  app_insights_name   = local.names.appInsights
}

module "network" {
  source                     = "./modules/network"
  resource_group_name        = azurerm_resource_group.main.name
  location                   = var.location
  tags                       = local.tags
  vnet_name                  = local.names.vnet
  nsg_name                   = local.names.nsg
  address_prefix             = var.vnet_address_prefix
  subnet_prefixes            = var.subnet_prefixes
  log_analytics_workspace_id = module.monitoring.log_analytics_workspace_id
}

module "identity" {
  source              = "./modules/identity"
  resource_group_name = azurerm_resource_group.main.name
  location            = var.location
  tags                = local.tags
  name                = local.names.identity
}

# The control plane's own identity: a second Postgres login, member of qp_platform only (ADR 0018). It holds no
# Azure role: the app reaches every other service with the runtime identity above.
module "control_identity" {
  source              = "./modules/identity"
  resource_group_name = azurerm_resource_group.main.name
  location            = var.location
  tags                = local.tags
  name                = local.names.controlIdentity
}

module "storage" {
  source                     = "./modules/storage"
  resource_group_name        = azurerm_resource_group.main.name
  location                   = var.location
  tags                       = local.tags
  name                       = local.names.storage
  private_endpoint_prefix    = local.abbrs.networkPrivateEndpoints
  private_endpoint_subnet_id = module.network.private_endpoint_subnet_id
  private_dns_zone_ids       = module.network.private_dns_zone_ids
  log_analytics_workspace_id = module.monitoring.log_analytics_workspace_id
}

module "eventhubs" {
  source                     = "./modules/eventhubs"
  resource_group_name        = azurerm_resource_group.main.name
  location                   = var.location
  tags                       = local.tags
  name                       = local.names.eventHubNamespace
  event_hub_names            = local.event_hub_names
  consumer_groups            = local.event_hub_consumer_groups
  partition_count            = var.event_hub_partition_count
  retention_days             = var.event_hub_retention_days
  private_endpoint_prefix    = local.abbrs.networkPrivateEndpoints
  private_endpoint_subnet_id = module.network.private_endpoint_subnet_id
  private_dns_zone_ids       = module.network.private_dns_zone_ids
  log_analytics_workspace_id = module.monitoring.log_analytics_workspace_id
}

module "postgres" {
  source                     = "./modules/postgres"
  resource_group_name        = azurerm_resource_group.main.name
  location                   = var.location
  tags                       = local.tags
  name                       = local.names.postgres
  high_availability          = local.is_prod
  backup_retention_days      = var.postgres_backup_retention_days
  storage_size_gb            = var.postgres_storage_size_gb
  entra_tenant_id            = var.entra_tenant_id
  admin_object_id            = var.postgres_admin_object_id
  admin_principal_name       = var.postgres_admin_principal_name
  admin_principal_type       = var.postgres_admin_principal_type
  delegated_subnet_id        = module.network.postgres_subnet_id
  private_dns_zone_ids       = module.network.private_dns_zone_ids
  log_analytics_workspace_id = module.monitoring.log_analytics_workspace_id
}

module "cosmos" {
  source                     = "./modules/cosmos"
  resource_group_name        = azurerm_resource_group.main.name
  location                   = var.location
  tags                       = local.tags
  name                       = local.names.cosmos
  zone_redundant             = local.is_prod
  private_endpoint_prefix    = local.abbrs.networkPrivateEndpoints
  private_endpoint_subnet_id = module.network.private_endpoint_subnet_id
  private_dns_zone_ids       = module.network.private_dns_zone_ids
  log_analytics_workspace_id = module.monitoring.log_analytics_workspace_id
}

# The sealing key of the secrets the database keeps (ADR 0040); the app reads it by a Key Vault reference.
module "keyvault" {
  source                     = "./modules/keyvault"
  resource_group_name        = azurerm_resource_group.main.name
  location                   = var.location
  tags                       = local.tags
  name                       = local.names.keyVault
  private_endpoint_prefix    = local.abbrs.networkPrivateEndpoints
  private_endpoint_subnet_id = module.network.private_endpoint_subnet_id
  private_dns_zone_ids       = module.network.private_dns_zone_ids
  log_analytics_workspace_id = module.monitoring.log_analytics_workspace_id
}

# The Durable backend (ADR 0024): the scheduler and its task hub through the azapi provider (azurerm has no type for
# them), with the private endpoint.
module "durabletask" {
  source                     = "./modules/durabletask"
  resource_group_id          = azurerm_resource_group.main.id
  resource_group_name        = azurerm_resource_group.main.name
  location                   = var.location
  tags                       = local.tags
  name                       = local.names.durableTaskScheduler
  task_hub_name              = local.task_hub_name
  dedicated                  = local.is_prod
  private_endpoint_prefix    = local.abbrs.networkPrivateEndpoints
  private_endpoint_subnet_id = module.network.private_endpoint_subnet_id
  private_dns_zone_ids       = module.network.private_dns_zone_ids
}

module "functionapp" {
  source                           = "./modules/functionapp"
  resource_group_name              = azurerm_resource_group.main.name
  location                         = var.location
  tags                             = local.tags
  plan_name                        = local.names.plan
  name                             = local.names.functionApp
  max_elastic_workers              = var.function_max_elastic_workers
  zone_redundant                   = local.is_prod
  identity_id                      = module.identity.id
  identity_client_id               = module.identity.client_id
  identity_name                    = module.identity.name
  control_identity_id              = module.control_identity.id
  control_identity_client_id       = module.control_identity.client_id
  control_identity_name            = module.control_identity.name
  storage_account_name             = module.storage.name
  blob_endpoint                    = module.storage.blob_endpoint
  event_hub_namespace_name         = module.eventhubs.name
  postgres_fqdn                    = module.postgres.fqdn
  postgres_database                = module.postgres.database_name
  cosmos_endpoint                  = module.cosmos.endpoint
  app_insights_connection_string   = module.monitoring.app_insights_connection_string
  environment_type                 = var.environment_type
  task_hub_name                    = module.durabletask.task_hub_name
  durable_task_scheduler_endpoint  = module.durabletask.endpoint
  key_vault_name                   = module.keyvault.name
  sealing_key_secret_name          = var.sealing_key_secret_name
  previous_sealing_key_secret_name = var.previous_sealing_key_secret_name
  api_client_id                    = var.api_client_id
  operator_entra_tenant_id         = var.entra_tenant_id
  database_pool_max                = var.database_pool_max
  function_subnet_id               = module.network.function_subnet_id
  apim_subnet_id                   = module.network.apim_subnet_id
  log_analytics_workspace_id       = module.monitoring.log_analytics_workspace_id
}

module "apim" {
  source                     = "./modules/apim"
  resource_group_name        = azurerm_resource_group.main.name
  location                   = var.location
  tags                       = local.tags
  name                       = local.names.apim
  publisher_email            = var.publisher_email
  publisher_name             = var.publisher_name
  entra_tenant_id            = var.entra_tenant_id
  api_client_id              = var.api_client_id
  function_app_host_name     = module.functionapp.default_host_name
  rate_limit_per_minute      = var.apim_rate_limit_per_minute
  subnet_id                  = module.network.apim_subnet_id
  log_analytics_workspace_id = module.monitoring.log_analytics_workspace_id
}

module "rbac" {
  source                    = "./modules/rbac"
  function_principal_id     = module.identity.principal_id
  resource_group_name       = azurerm_resource_group.main.name
  storage_account_id        = module.storage.id
  event_hub_ids             = module.eventhubs.hub_ids
  cosmos_account_id         = module.cosmos.id
  cosmos_account_name       = module.cosmos.name
  app_insights_id           = module.monitoring.app_insights_id
  durable_task_scheduler_id = module.durabletask.id
  key_vault_id              = module.keyvault.id
}

module "alerts" {
  source              = "./modules/alerts"
  resource_group_name = azurerm_resource_group.main.name
  location            = var.location
  tags                = local.tags
  action_group_name   = local.names.actionGroup
  alert_prefix        = local.names.alertPrefix
  alert_email         = var.alert_email
  app_insights_id     = module.monitoring.app_insights_id
}

module "workbook" {
  source              = "./modules/workbook"
  resource_group_name = azurerm_resource_group.main.name
  location            = var.location
  tags                = local.tags
  app_insights_id     = module.monitoring.app_insights_id
}
