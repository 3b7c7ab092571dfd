# intent_ref: platform.estate
# A user-assigned identity of the function app. The runtime identity is the principal every data-plane grant
# names; the control identity (a second instance) is only the control plane's Postgres login (ADR 0018).

resource "azurerm_user_assigned_identity" "main" {
  name                = var.name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
}
