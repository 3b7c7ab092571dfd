# intent_ref: platform.estate
# The Durable Functions backend (ADR 0024): a Durable Task Scheduler with the platform's task hub, reachable only
# through a private endpoint. azurerm has no resource type for them, so the two are declared with the azapi provider
# (the ARM resources themselves, the same bodies as bicep/modules/durabletask.bicep). Production takes the Dedicated
# SKU with three capacity units (zone redundant); dev the Consumption SKU. The role assignment is in the rbac module.

locals {
  api_version = "2026-02-01"
}

resource "azapi_resource" "scheduler" {
  type      = "Microsoft.DurableTask/schedulers@${local.api_version}"
  name      = var.name
  parent_id = var.resource_group_id
  location  = var.location
  tags      = var.tags

  body = {
    properties = {
      sku = var.dedicated ? { name = "Dedicated", capacity = 3 } : { name = "Consumption" }
      # Private endpoint only: no public address is admitted.
      publicNetworkAccess = "Disabled"
      ipAllowlist         = []
    }
  }
  response_export_values = ["properties.endpoint"]
}

resource "azapi_resource" "task_hub" {
  type      = "Microsoft.DurableTask/schedulers/taskHubs@${local.api_version}"
  name      = var.task_hub_name
  parent_id = azapi_resource.scheduler.id
  body      = { properties = {} }
}

resource "azurerm_private_endpoint" "main" {
  name                = "${var.private_endpoint_prefix}${var.name}"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  subnet_id           = var.private_endpoint_subnet_id

  private_service_connection {
    name                           = "scheduler"
    private_connection_resource_id = azapi_resource.scheduler.id
    subresource_names              = ["scheduler"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "default"
    private_dns_zone_ids = [var.private_dns_zone_ids["durabletask"]]
  }
}
