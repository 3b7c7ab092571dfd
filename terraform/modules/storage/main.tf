# intent_ref: platform.estate
# The storage account: Durable Functions state (blob, queue, table), the runtime's own blobs and the artifacts
# container. Reached only through private endpoints and only with Entra identities.

locals {
  private_services = ["blob", "queue", "table"]
}

resource "azurerm_storage_account" "main" {
  #checkov:skip=CKV_AZURE_33:queue logging is collected by the queue service diagnostic setting below; queue_properties would need a shared key
  #checkov:skip=CKV2_AZURE_1:encryption uses Microsoft-managed keys with infrastructure encryption; customer-managed keys are out of scope (ADR 0013)
  name                     = var.name
  resource_group_name      = var.resource_group_name
  location                 = var.location
  tags                     = var.tags
  account_kind             = "StorageV2"
  account_tier             = "Standard"
  account_replication_type = "GZRS"
  min_tls_version          = "TLS1_2"
  # Identity only: no account keys, no SAS signed with them, no anonymous blobs.
  shared_access_key_enabled        = false
  default_to_oauth_authentication  = true
  allow_nested_items_to_be_public  = false
  cross_tenant_replication_enabled = false
  # The only path in is the private endpoints below.
  public_network_access_enabled     = false
  infrastructure_encryption_enabled = true

  network_rules {
    default_action = "Deny"
    bypass         = ["AzureServices"]
  }

  blob_properties {
    delete_retention_policy {
      days = 14
    }
    container_delete_retention_policy {
      days = 14
    }
  }
}

resource "azurerm_storage_container" "artifacts" {
  #checkov:skip=CKV2_AZURE_21:blob read/write/delete logs go to Log Analytics through the blobServices diagnostic setting in this module
  name                  = var.artifacts_container_name
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

resource "azurerm_private_endpoint" "main" {
  for_each            = toset(local.private_services)
  name                = "${var.private_endpoint_prefix}${var.name}-${each.value}"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  subnet_id           = var.private_endpoint_subnet_id

  private_service_connection {
    name                           = each.value
    private_connection_resource_id = azurerm_storage_account.main.id
    subresource_names              = [each.value]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "default"
    private_dns_zone_ids = [var.private_dns_zone_ids[each.value]]
  }
}

resource "azurerm_monitor_diagnostic_setting" "account" {
  name                       = "diag-log"
  target_resource_id         = azurerm_storage_account.main.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  metric {
    category = "Transaction"
  }
}

resource "azurerm_monitor_diagnostic_setting" "services" {
  for_each                   = toset(local.private_services)
  name                       = "diag-log"
  target_resource_id         = "${azurerm_storage_account.main.id}/${each.value}Services/default"
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category_group = "allLogs"
  }

  metric {
    category = "Transaction"
  }
}
