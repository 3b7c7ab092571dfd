# intent_ref: platform.estate
variable "function_principal_id" {
  type        = string
  description = "Principal id of the function app identity."
}

variable "resource_group_name" {
  type        = string
  description = "Resource group of the estate."
}

variable "storage_account_id" {
  type        = string
  description = "Storage account holding Durable state and artifacts."
}

variable "event_hub_ids" {
  type        = map(string)
  description = "Id of each event hub by name; the Event Hubs roles are granted per hub, never on the namespace."
}

variable "cosmos_account_id" {
  type        = string
  description = "Cosmos DB account of the audit trail."
}

variable "cosmos_account_name" {
  type        = string
  description = "Name of that Cosmos DB account."
}

variable "app_insights_id" {
  type        = string
  description = "Application Insights component the app writes telemetry to."
}

variable "durable_task_scheduler_id" {
  type        = string
  description = "Durable Task Scheduler holding the task hub (ADR 0024)."
}

variable "key_vault_id" {
  type        = string
  description = "Key Vault holding the sealing key (ADR 0040)."
}
