# intent_ref: platform.estate
# The virtual network every private path runs through, its subnets and the private DNS zones.

locals {
  # privatelink zones resolve the private endpoints; Postgres (VNet-injected) uses its own zone.
  dns_zones = {
    blob     = "privatelink.blob.core.windows.net"
    queue    = "privatelink.queue.core.windows.net"
    table    = "privatelink.table.core.windows.net"
    eventhub = "privatelink.servicebus.windows.net"
    cosmos   = "privatelink.documents.azure.com"
    postgres = "privatelink.postgres.database.azure.com"
    # The Durable Task Scheduler (ADR 0024): its endpoint <name>-<suffix>.<region>.durabletask.io resolves here.
    durabletask = "privatelink.durabletask.io"
    # Key Vault (ADR 0040): the sealing key is read over this private path.
    keyvault = "privatelink.vaultcore.azure.net"
  }

  subnets = {
    # Outbound integration of the function app (and its staging slot).
    "snet-function" = { prefix = var.subnet_prefixes.function, delegation = "Microsoft.Web/serverFarms", service_endpoints = [] }
    # Outbound integration of API Management (StandardV2); the function app admits only this subnet.
    "snet-apim"              = { prefix = var.subnet_prefixes.apim, delegation = "Microsoft.Web/serverFarms", service_endpoints = ["Microsoft.Web"] }
    "snet-private-endpoints" = { prefix = var.subnet_prefixes.privateEndpoints, delegation = null, service_endpoints = [] }
    "snet-postgres"          = { prefix = var.subnet_prefixes.postgres, delegation = "Microsoft.DBforPostgreSQL/flexibleServers", service_endpoints = [] }
    # Operators' runner (bootstrap, migrations, restores): the only way to reach Postgres.
    "snet-ops" = { prefix = var.subnet_prefixes.ops, delegation = null, service_endpoints = [] }
  }
}

resource "azurerm_network_security_group" "main" {
  name                = var.nsg_name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  # No inbound rules beyond the platform defaults: nothing in these subnets listens to the internet.
}

resource "azurerm_virtual_network" "main" {
  name                = var.vnet_name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  address_space       = [var.address_prefix]
}

resource "azurerm_subnet" "main" {
  #checkov:skip=CKV2_AZURE_31:every subnet is associated with the shared NSG by azurerm_subnet_network_security_group_association.main below
  for_each             = local.subnets
  name                 = each.key
  resource_group_name  = var.resource_group_name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = [each.value.prefix]
  service_endpoints    = each.value.service_endpoints

  dynamic "delegation" {
    for_each = each.value.delegation == null ? [] : [each.value.delegation]
    content {
      name = "delegation"
      service_delegation {
        name = delegation.value
      }
    }
  }
}

resource "azurerm_subnet_network_security_group_association" "main" {
  for_each                  = azurerm_subnet.main
  subnet_id                 = each.value.id
  network_security_group_id = azurerm_network_security_group.main.id
}

resource "azurerm_private_dns_zone" "main" {
  for_each            = local.dns_zones
  name                = each.value
  resource_group_name = var.resource_group_name
  tags                = var.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "main" {
  for_each              = local.dns_zones
  name                  = var.vnet_name
  resource_group_name   = var.resource_group_name
  private_dns_zone_name = azurerm_private_dns_zone.main[each.key].name
  virtual_network_id    = azurerm_virtual_network.main.id
  registration_enabled  = false
  tags                  = var.tags
}

resource "azurerm_monitor_diagnostic_setting" "vnet" {
  name                       = "diag-log"
  target_resource_id         = azurerm_virtual_network.main.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category_group = "allLogs"
  }

  metric {
    category = "AllMetrics"
  }
}

resource "azurerm_monitor_diagnostic_setting" "nsg" {
  name                       = "diag-log"
  target_resource_id         = azurerm_network_security_group.main.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category_group = "allLogs"
  }
}
