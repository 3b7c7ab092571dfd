# intent_ref: platform.estate
# Cosmos DB (NoSQL) for the audit trail in Azure: keys off, private endpoint only, container partitioned by
# /tenantId with TTL enabled so each record carries its tenant's retention (ADR 0012).

resource "azurerm_cosmosdb_account" "main" {
  #checkov:skip=CKV_AZURE_100:data is encrypted at rest with Microsoft-managed keys; customer-managed keys are out of scope (ADR 0013)
  name                = var.name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  offer_type          = "Standard"
  kind                = "GlobalDocumentDB"
  # Entra RBAC only: no primary keys, and keys could not change the schema even if they existed.
  local_authentication_disabled      = true
  access_key_metadata_writes_enabled = false
  minimal_tls_version                = "Tls12"
  public_network_access_enabled      = false
  is_virtual_network_filter_enabled  = true
  multiple_write_locations_enabled   = false

  consistency_policy {
    consistency_level = "Session"
  }

  geo_location {
    location          = var.location
    failover_priority = 0
    zone_redundant    = var.zone_redundant
  }

  backup {
    type = "Continuous"
    tier = "Continuous7Days"
  }
}

resource "azurerm_cosmosdb_sql_database" "main" {
  name                = var.database_name
  resource_group_name = var.resource_group_name
  account_name        = azurerm_cosmosdb_account.main.name
}

resource "azurerm_cosmosdb_sql_container" "audit" {
  name                  = var.audit_container_name
  resource_group_name   = var.resource_group_name
  account_name          = azurerm_cosmosdb_account.main.name
  database_name         = azurerm_cosmosdb_sql_database.main.name
  partition_key_paths   = ["/tenantId"]
  partition_key_kind    = "Hash"
  partition_key_version = 2
  default_ttl           = var.audit_default_ttl

  # AUDIT_INDEXING_POLICY in shared/audit/cosmos.py (tests/infra compares them): the page order
  # (ORDER BY occurredAt DESC, id DESC) needs the composite index, without which every list and export answers 400.
  # azurerm has no `automatic` (always on) and leaves out /"_etag"/?, which the service adds by itself: stated here,
  # it would show as a change on every plan.
  indexing_policy {
    indexing_mode = "consistent"

    included_path {
      path = "/*"
    }

    excluded_path {
      path = "/detail/*"
    }

    composite_index {
      index {
        path  = "/occurredAt"
        order = "descending"
      }
      index {
        path  = "/id"
        order = "descending"
      }
    }
  }

  autoscale_settings {
    max_throughput = 1000
  }
}

resource "azurerm_private_endpoint" "main" {
  name                = "${var.private_endpoint_prefix}${var.name}"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  subnet_id           = var.private_endpoint_subnet_id

  private_service_connection {
    name                           = "sql"
    private_connection_resource_id = azurerm_cosmosdb_account.main.id
    subresource_names              = ["Sql"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "default"
    private_dns_zone_ids = [var.private_dns_zone_ids["cosmos"]]
  }
}

resource "azurerm_monitor_diagnostic_setting" "main" {
  name                       = "diag-log"
  target_resource_id         = azurerm_cosmosdb_account.main.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category_group = "allLogs"
  }

  metric {
    category = "Requests"
  }
}
