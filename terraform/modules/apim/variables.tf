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

variable "name" {
  type        = string
  description = "Name of the API Management service."
}

variable "publisher_email" {
  type        = string
  description = "Publisher e-mail."
}

variable "publisher_name" {
  type        = string
  description = "Publisher name."
}

variable "entra_tenant_id" {
  type        = string
  description = "Entra tenant of the API app registration."
}

variable "api_client_id" {
  type        = string
  description = "Application (client) id of the API registration: the `aud` of its v2 tokens, checked at the edge."
}

variable "function_app_host_name" {
  type        = string
  description = "Default host name of the function app (production slot)."
}

variable "rate_limit_per_minute" {
  type        = number
  description = "Calls per minute per Entra tenant."
}

variable "subnet_id" {
  type        = string
  description = "Subnet for the outbound VNet integration (StandardV2)."
}
