# intent_ref: platform.estate
variable "resource_group_name" {
  type        = string
  description = "Resource group of the estate."
}

variable "location" {
  type        = string
  description = "Azure region."
}

variable "tags" {
  type        = map(string)
  description = "Tags applied to every resource."
}

variable "log_analytics_workspace_id" {
  type        = string
  description = "Log Analytics workspace receiving diagnostics."
}

variable "plan_name" {
  type        = string
  description = "Name of the Elastic Premium plan."
}

variable "name" {
  type        = string
  description = "Name of the function app."
}

variable "max_elastic_workers" {
  type        = number
  description = "Maximum instances of the plan."
}

variable "zone_redundant" {
  type        = bool
  description = "Spread the plan over availability zones (production; needs at least 3 instances)."
}

variable "identity_id" {
  type        = string
  description = "Resource id of the runtime user-assigned identity."
}

variable "identity_client_id" {
  type        = string
  description = "Client id of the runtime user-assigned identity."
}

variable "identity_name" {
  type        = string
  description = "Name of the identity, which is also its Postgres login name."
}

variable "control_identity_id" {
  type        = string
  description = "Resource id of the control plane's user-assigned identity (its own Postgres login, ADR 0018)."
}

variable "control_identity_client_id" {
  type        = string
  description = "Client id of the control plane's identity: the app asks for its token as that login's password."
}

variable "control_identity_name" {
  type        = string
  description = "Name of the control plane's identity, which is also its Postgres login name."
}

variable "storage_account_name" {
  type        = string
  description = "Storage account holding Durable Functions state and artifacts."
}

variable "blob_endpoint" {
  type        = string
  description = "Blob endpoint of that account (QP_BLOB_ACCOUNT_URL)."
}

variable "event_hub_namespace_name" {
  type        = string
  description = "Event Hubs namespace name."
}

variable "postgres_fqdn" {
  type        = string
  description = "Postgres server FQDN."
}

variable "postgres_database" {
  type        = string
  description = "Postgres database name."
}

variable "cosmos_endpoint" {
  type        = string
  description = "Cosmos DB account endpoint (QP_COSMOS_ENDPOINT)."
}

variable "app_insights_connection_string" {
  type        = string
  description = "Application Insights connection string (not a secret: ingestion requires an Entra token)."
  sensitive   = true
}

variable "environment_type" {
  type        = string
  description = "QP_ENVIRONMENT (dev or prod)."
}

variable "task_hub_name" {
  type        = string
  description = "Durable Functions task hub (QP_TASK_HUB)."
}

variable "api_client_id" {
  type        = string
  description = "Application (client) id of the API registration: the one accepted token audience (QP_AUTH_AUDIENCE)."
}

variable "operator_entra_tenant_id" {
  type        = string
  description = "The operators' own Entra tenant, whose tokens alone may carry Platform.Admin (QP_OPERATOR_ENTRA_TENANT_ID)."
}

variable "database_pool_max" {
  type        = number
  description = "QP_DATABASE_POOL_MAX."
}

variable "function_subnet_id" {
  type        = string
  description = "Subnet for the outbound VNet integration."
}

variable "apim_subnet_id" {
  type        = string
  description = "API Management integration subnet: the only source admitted to the production site."
}

variable "durable_task_scheduler_endpoint" {
  type        = string
  description = "Endpoint of the Durable Task Scheduler that holds the task hub (ADR 0024)."
}

variable "key_vault_name" {
  type        = string
  description = "Key Vault holding the sealing key (qp-sealing-key, ADR 0040)."
}

variable "sealing_key_secret_name" {
  type        = string
  description = "Key Vault secret holding the current sealing key (QP_SEALING_KEY)."
}

variable "previous_sealing_key_secret_name" {
  type        = string
  description = "Key Vault secret holding the sealing key before a rotation (QP_SEALING_KEY_PREVIOUS); empty otherwise."
}
