# intent_ref: platform.estate
# Event Hubs: the namespace, the three hubs of DESIGN.md section 5 and one consumer group per consumer.

resource "azurerm_eventhub_namespace" "main" {
  name                = var.name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  sku                 = "Standard"
  capacity            = 1
  # Entra only: no SAS keys exist to leak or rotate.
  local_authentication_enabled  = false
  minimum_tls_version           = "1.2"
  public_network_access_enabled = false
  auto_inflate_enabled          = true
  maximum_throughput_units      = 10
}

resource "azurerm_eventhub" "main" {
  for_each          = toset(var.event_hub_names)
  name              = each.value
  namespace_id      = azurerm_eventhub_namespace.main.id
  partition_count   = var.partition_count
  message_retention = var.retention_days
}

resource "azurerm_eventhub_consumer_group" "main" {
  for_each            = { for item in var.consumer_groups : "${item.hub}/${item.group}" => item }
  name                = each.value.group
  namespace_name      = azurerm_eventhub_namespace.main.name
  eventhub_name       = azurerm_eventhub.main[each.value.hub].name
  resource_group_name = var.resource_group_name
}

resource "azurerm_private_endpoint" "main" {
  name                = "${var.private_endpoint_prefix}${var.name}"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  subnet_id           = var.private_endpoint_subnet_id

  private_service_connection {
    name                           = "namespace"
    private_connection_resource_id = azurerm_eventhub_namespace.main.id
    subresource_names              = ["namespace"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "default"
    private_dns_zone_ids = [var.private_dns_zone_ids["eventhub"]]
  }
}

resource "azurerm_monitor_diagnostic_setting" "main" {
  name                       = "diag-log"
  target_resource_id         = azurerm_eventhub_namespace.main.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category_group = "allLogs"
  }

  metric {
    category = "AllMetrics"
  }
}
