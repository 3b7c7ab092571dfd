# intent_ref: platform.estate
provider "azurerm" {
  subscription_id = var.subscription_id
  # Shared keys are off on the storage account, so data-plane calls must use Entra.
  storage_use_azuread = true

  features {
    resource_group {
      prevent_deletion_if_contains_resources = true
    }
  }
}
