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

# Entra authentication from the same credential chain as azurerm; used for the Durable Task Scheduler only.
provider "azapi" {
  subscription_id = var.subscription_id
}
