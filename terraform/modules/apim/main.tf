# intent_ref: platform.estate
# API Management in front of the function app: the API imported from docs/openapi.json, the shared policy
# (bicep/policies/api-policy.xml) and the named values it reads.

# No daily quota here: quota-by-key does not exist on the v2 tiers (StandardV2 below), and the app enforces each
# tenant's quotas itself, answering 429 (ADR 0013).
locals {
  named_values = {
    # The v2 token's `aud` is the client id; the gateway's own token for the backend is asked for the same resource.
    "api-audience"      = var.api_client_id
    "backend-audience"  = var.api_client_id
    "openid-config-url" = "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration"
    "rate-limit-calls"  = tostring(var.rate_limit_per_minute)
    "entra-tenant-id"   = var.entra_tenant_id
  }
}

resource "azurerm_api_management" "main" {
  #checkov:skip=CKV_AZURE_174:the gateway is the platform's public entry point; it admits only Entra-authenticated calls (api-policy.xml)
  name                = var.name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  publisher_email     = var.publisher_email
  publisher_name      = var.publisher_name
  sku_name            = "StandardV2_1"
  # StandardV2 VNet integration is outbound only: the gateway reaches the function app from snet-apim.
  virtual_network_type = "External"

  virtual_network_configuration {
    subnet_id = var.subnet_id
  }

  identity {
    type = "SystemAssigned"
  }

  security {
    backend_ssl30_enabled  = false
    backend_tls10_enabled  = false
    backend_tls11_enabled  = false
    frontend_ssl30_enabled = false
    frontend_tls10_enabled = false
    frontend_tls11_enabled = false
  }
}

resource "azurerm_api_management_named_value" "main" {
  for_each            = local.named_values
  name                = each.key
  resource_group_name = var.resource_group_name
  api_management_name = azurerm_api_management.main.name
  display_name        = each.key
  value               = each.value
  secret              = false
}

resource "azurerm_api_management_backend" "function_app" {
  name                = "function-app"
  resource_group_name = var.resource_group_name
  api_management_name = azurerm_api_management.main.name
  protocol            = "http"
  url                 = "https://${var.function_app_host_name}"

  tls {
    validate_certificate_chain = true
    validate_certificate_name  = true
  }
}

resource "azurerm_api_management_api" "main" {
  name                = "quantum-platform"
  resource_group_name = var.resource_group_name
  api_management_name = azurerm_api_management.main.name
  revision            = "1"
  display_name        = "Quantum Platform API"
  path                = ""
  protocols           = ["https"]
  service_url         = "https://${var.function_app_host_name}"
  # Tenants authenticate with Entra tokens; subscription keys would be a second, shared secret.
  subscription_required = false

  import {
    content_format = "openapi+json"
    content_value  = file("${path.module}/../../../docs/openapi.json")
  }
}

resource "azurerm_api_management_api_policy" "main" {
  api_name            = azurerm_api_management_api.main.name
  api_management_name = azurerm_api_management.main.name
  resource_group_name = var.resource_group_name
  xml_content         = file("${path.module}/../../../bicep/policies/api-policy.xml")

  depends_on = [azurerm_api_management_named_value.main, azurerm_api_management_backend.function_app]
}

resource "azurerm_monitor_diagnostic_setting" "main" {
  name                           = "diag-log"
  target_resource_id             = azurerm_api_management.main.id
  log_analytics_workspace_id     = var.log_analytics_workspace_id
  log_analytics_destination_type = "Dedicated"

  enabled_log {
    category_group = "allLogs"
  }

  metric {
    category = "AllMetrics"
  }
}
