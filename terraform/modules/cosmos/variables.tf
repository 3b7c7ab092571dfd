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

variable "private_endpoint_prefix" {
  type        = string
  description = "Name prefix of private endpoints (from abbreviations.json)."
}

variable "private_endpoint_subnet_id" {
  type        = string
  description = "Subnet holding the private endpoints."
}

variable "private_dns_zone_ids" {
  type        = map(string)
  description = "Private DNS zone ids by service (blob, queue, table, eventhub, cosmos, postgres)."
}

variable "name" {
  type        = string
  description = "Name of the Cosmos DB account."
}

variable "zone_redundant" {
  type        = bool
  description = "Zone-redundant replicas (production)."
}

variable "database_name" {
  type        = string
  description = "Database name (QP_COSMOS_DATABASE)."
  default     = "quantum"
}

variable "audit_container_name" {
  type        = string
  description = "Audit container name (QP_COSMOS_AUDIT_CONTAINER)."
  default     = "audit"
}

variable "audit_default_ttl" {
  type        = number
  description = "Default TTL of audit records in seconds; -1 means no default, each record sets its own."
  default     = -1
}
