# intent_ref: platform.estate
terraform {
  required_version = ">= 1.9, < 2.0"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.20"
    }
    # The Durable Task Scheduler and its task hub, which azurerm has no resource type for (ADR 0024).
    azapi = {
      source  = "azure/azapi"
      version = "~> 2.4"
    }
  }
}
