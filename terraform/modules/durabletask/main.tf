# intent_ref: platform.estate
# The Durable Functions backend (ADR 0024). azurerm has no resource type for a Durable Task Scheduler or its task
# hubs, and this stack does not use the azapi provider, so this module cannot create them: it adopts the scheduler
# that bicep/modules/durabletask.bicep creates (same name, same task hub, SKU and public access off), by its
# resource id (built from the shared naming table) and its endpoint (var.endpoint). Everything around it is here:
# the private endpoint and its DNS zone group; the role assignment is in the rbac module.

locals {
  scheduler_id = "/subscriptions/${var.subscription_id}/resourceGroups/${var.resource_group_name}/providers/Microsoft.DurableTask/schedulers/${var.name}"
}

resource "azurerm_private_endpoint" "main" {
  name                = "${var.private_endpoint_prefix}${var.name}"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  subnet_id           = var.private_endpoint_subnet_id

  private_service_connection {
    name                           = "scheduler"
    private_connection_resource_id = local.scheduler_id
    subresource_names              = ["scheduler"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "default"
    private_dns_zone_ids = [var.private_dns_zone_ids["durabletask"]]
  }
}
