# intent_ref: platform.estate
# The same parameters as bicep/main.bicep, in snake_case.

variable "subscription_id" {
  type        = string
  description = "Subscription the estate is deployed to."

  validation {
    condition     = can(regex("^[0-9a-fA-F-]{36}$", var.subscription_id))
    error_message = "subscription_id must be a GUID."
  }
}

variable "environment_name" {
  type        = string
  description = "Name of the environment (azd environment name), e.g. dev or prod; part of every resource name."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,15}$", var.environment_name))
    error_message = "environment_name must be 1-16 lowercase letters, digits or hyphens."
  }
}

variable "environment_type" {
  type        = string
  description = "Kind of environment; becomes QP_ENVIRONMENT and selects production-grade options (zone redundancy, HA)."
  default     = "dev"

  validation {
    condition     = contains(["dev", "prod"], var.environment_type)
    error_message = "environment_type must be dev or prod."
  }
}

variable "location" {
  type        = string
  description = "Azure region of every resource."

  validation {
    condition     = length(var.location) > 0
    error_message = "location must not be empty."
  }
}

variable "resource_token" {
  type        = string
  description = "Suffix that makes globally unique names unique; the bicep deployment's RESOURCE_TOKEN output when both stacks describe one estate."

  validation {
    condition     = can(regex("^[a-z0-9]{5,13}$", var.resource_token))
    error_message = "resource_token must be 5-13 lowercase letters or digits."
  }
}

# Entra v2 access tokens (the only ones the app accepts, ADR 0010) always carry the API's client id as `aud`, never
# its app id URI. No default: a wrong value answers every call 401.
variable "api_client_id" {
  type        = string
  description = "Application (client) id of the API app registration: the `aud` of its v2 access tokens (GUID)."

  validation {
    condition     = can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", var.api_client_id))
    error_message = "api_client_id must be the API registration's application (client) id, a GUID; not its api:// URI."
  }
}

variable "entra_tenant_id" {
  type        = string
  description = "Entra tenant of the API app registration and of the Postgres administrator."

  validation {
    condition     = can(regex("^[0-9a-fA-F-]{36}$", var.entra_tenant_id))
    error_message = "entra_tenant_id must be a GUID."
  }
}

variable "postgres_admin_object_id" {
  type        = string
  description = "Object id of the Entra group (or principal) that administers Postgres and runs the role bootstrap."

  validation {
    condition     = can(regex("^[0-9a-fA-F-]{36}$", var.postgres_admin_object_id))
    error_message = "postgres_admin_object_id must be a GUID."
  }
}

variable "postgres_admin_principal_name" {
  type        = string
  description = "Display name of that Entra group or principal, as Postgres knows it."

  validation {
    condition     = length(var.postgres_admin_principal_name) > 0
    error_message = "postgres_admin_principal_name must not be empty."
  }
}

variable "postgres_admin_principal_type" {
  type        = string
  description = "Kind of the Postgres Entra administrator."
  default     = "Group"

  validation {
    condition     = contains(["Group", "User", "ServicePrincipal"], var.postgres_admin_principal_type)
    error_message = "postgres_admin_principal_type must be Group, User or ServicePrincipal."
  }
}

variable "publisher_email" {
  type        = string
  description = "Publisher e-mail shown by API Management."

  validation {
    condition     = can(regex("^[^@\\s]+@[^@\\s]+$", var.publisher_email))
    error_message = "publisher_email must be an e-mail address."
  }
}

variable "publisher_name" {
  type        = string
  description = "Publisher name shown by API Management."

  validation {
    condition     = length(var.publisher_name) > 0
    error_message = "publisher_name must not be empty."
  }
}

variable "alert_email" {
  type        = string
  description = "E-mail address the alert action group notifies."

  validation {
    condition     = can(regex("^[^@\\s]+@[^@\\s]+$", var.alert_email))
    error_message = "alert_email must be an e-mail address."
  }
}

variable "event_hub_partition_count" {
  type        = number
  description = "Partitions per event hub (fixed after creation on the Standard tier)."
  default     = 4

  validation {
    condition     = var.event_hub_partition_count >= 1 && var.event_hub_partition_count <= 32
    error_message = "event_hub_partition_count must be between 1 and 32."
  }
}

variable "event_hub_retention_days" {
  type        = number
  description = "Days an event stays in each hub (Standard tier allows 1-7)."
  default     = 1

  validation {
    condition     = var.event_hub_retention_days >= 1 && var.event_hub_retention_days <= 7
    error_message = "event_hub_retention_days must be between 1 and 7."
  }
}

variable "function_max_elastic_workers" {
  type        = number
  description = "Maximum instances the Elastic Premium plan scales out to."
  default     = 20

  validation {
    condition     = var.function_max_elastic_workers >= 1 && var.function_max_elastic_workers <= 100
    error_message = "function_max_elastic_workers must be between 1 and 100."
  }
}

variable "sealing_key_secret_name" {
  type        = string
  description = "Key Vault secret holding the current sealing key (QP_SEALING_KEY); a rotation names a new secret here (docs/runbooks/secrets.md)."
  default     = "qp-sealing-key"

  validation {
    condition     = can(regex("^[0-9A-Za-z-]{1,127}$", var.sealing_key_secret_name))
    error_message = "sealing_key_secret_name must be a Key Vault secret name."
  }
}

variable "previous_sealing_key_secret_name" {
  type        = string
  description = "Key Vault secret holding the sealing key before a rotation (QP_SEALING_KEY_PREVIOUS) while values are sealed again; empty otherwise."
  default     = ""

  validation {
    condition     = can(regex("^[0-9A-Za-z-]{0,127}$", var.previous_sealing_key_secret_name))
    error_message = "previous_sealing_key_secret_name must be empty or a Key Vault secret name."
  }
}

variable "database_pool_max" {
  type        = number
  description = "Connections per instance in the Postgres pool (QP_DATABASE_POOL_MAX)."
  default     = 10

  validation {
    condition     = var.database_pool_max >= 1 && var.database_pool_max <= 200
    error_message = "database_pool_max must be between 1 and 200."
  }
}

variable "postgres_backup_retention_days" {
  type        = number
  description = "Days of Postgres point-in-time restore."
  default     = 14

  validation {
    condition     = var.postgres_backup_retention_days >= 7 && var.postgres_backup_retention_days <= 35
    error_message = "postgres_backup_retention_days must be between 7 and 35."
  }
}

variable "postgres_storage_size_gb" {
  type        = number
  description = "Postgres storage in GiB."
  default     = 64

  validation {
    condition     = var.postgres_storage_size_gb >= 32 && var.postgres_storage_size_gb <= 16384
    error_message = "postgres_storage_size_gb must be between 32 and 16384."
  }
}

variable "apim_rate_limit_per_minute" {
  type        = number
  description = "Requests per minute per Entra tenant (tid) at the API Management edge."
  default     = 1200

  validation {
    condition     = var.apim_rate_limit_per_minute >= 1
    error_message = "apim_rate_limit_per_minute must be at least 1."
  }
}

variable "task_hub_name" {
  type        = string
  description = "Durable Functions task hub name (QP_TASK_HUB); null means Quantum<environment_name without hyphens>."
  default     = null

  validation {
    condition     = var.task_hub_name == null || can(regex("^[A-Za-z][A-Za-z0-9]{2,44}$", var.task_hub_name))
    error_message = "task_hub_name must be 3-45 letters or digits, starting with a letter."
  }
}


variable "vnet_address_prefix" {
  type        = string
  description = "Address space of the virtual network that carries every private path."
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vnet_address_prefix, 0))
    error_message = "vnet_address_prefix must be a CIDR block."
  }
}

variable "subnet_prefixes" {
  type = object({
    function         = string
    apim             = string
    privateEndpoints = string
    postgres         = string
    ops              = string
  })
  description = "Address prefixes of the subnets, each inside vnet_address_prefix."
  default = {
    function         = "10.40.0.0/24"
    apim             = "10.40.1.0/24"
    privateEndpoints = "10.40.2.0/24"
    postgres         = "10.40.3.0/24"
    ops              = "10.40.4.0/24"
  }

  validation {
    condition     = alltrue([for prefix in values(var.subnet_prefixes) : can(cidrhost(prefix, 0))])
    error_message = "every subnet prefix must be a CIDR block."
  }
}
