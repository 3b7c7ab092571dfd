# intent_ref: platform.estate
# The function app's user-assigned identity: the one principal every data-plane grant names.

resource "azurerm_user_assigned_identity" "main" {
  name                = var.name
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
}
