# intent_ref: platform.estate
# Key Vault for the sealing key (ADR 0040): RBAC authorization only, purge protection, private endpoint only. The
# secret qp-sealing-key is not written here: a deployment has no stable random value to give it without keeping the
# key in its state, and the vault's data plane is private, so operators create it once from the ops subnet
# (docs/runbooks/secrets.md) and the app reads it through a Key Vault reference. bicep/modules/keyvault.bicep is the
# same.

data "azurerm_client_config" "current" {}

resource "azurerm_key_vault" "main" {
  name                       = var.name
  resource_group_name        = var.resource_group_name
  location                   = var.location
  tags                       = var.tags
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  rbac_authorization_enabled = true
  soft_delete_retention_days = 90
  # A purged key would make every sealed secret unreadable.
  purge_protection_enabled      = true
  public_network_access_enabled = false

  network_acls {
    default_action = "Deny"
    bypass         = "None"
  }
}

resource "azurerm_private_endpoint" "main" {
  name                = "${var.private_endpoint_prefix}${var.name}"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  subnet_id           = var.private_endpoint_subnet_id

  private_service_connection {
    name                           = "vault"
    private_connection_resource_id = azurerm_key_vault.main.id
    subresource_names              = ["vault"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "default"
    private_dns_zone_ids = [var.private_dns_zone_ids["keyvault"]]
  }
}

resource "azurerm_monitor_diagnostic_setting" "main" {
  name                       = "diag-log"
  target_resource_id         = azurerm_key_vault.main.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category_group = "allLogs"
  }

  metric {
    category = "AllMetrics"
  }
}
