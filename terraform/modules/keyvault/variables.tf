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

variable "name" {
  type        = string
  description = "Name of the Key Vault."
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
  description = "Private DNS zone ids by service."
}

variable "log_analytics_workspace_id" {
  type        = string
  description = "Log Analytics workspace receiving diagnostics."
}
