# intent_ref: platform.estate
provider "azurerm" {
  subscription_id = var.subscription_id
  # Shared keys are off on the storage account, so data-plane calls must use Entra.
  storage_use_azuread = true

  features {
    resource_group {
      prevent_deletion_if_contains_resources = true
    }
    # The storage account answers only on its private endpoints, so its data plane is unreachable from wherever
    # terraform runs; azurerm 4.x would read its queue and static-website properties there on every refresh and fail
    # 403 (hashicorp/terraform-provider-azurerm#33454). Off, the provider uses Azure Resource Manager alone, which
    # is why the storage module sets no queue_properties or static_website and containers take storage_account_id.
    storage {
      data_plane_available = false
    }
  }
}

# Entra authentication from the same credential chain as azurerm; used for the Durable Task Scheduler only.
provider "azapi" {
  subscription_id = var.subscription_id
}
