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
  description = "Name of the server."
}

variable "high_availability" {
  type        = bool
  description = "Zone-redundant high availability (production)."
}

variable "backup_retention_days" {
  type        = number
  description = "Days of point-in-time restore."
}

variable "storage_size_gb" {
  type        = number
  description = "Storage in GiB (grows automatically)."
}

variable "entra_tenant_id" {
  type        = string
  description = "Entra tenant of the administrator."
}

variable "admin_object_id" {
  type        = string
  description = "Object id of the Entra administrator (a group of platform operators)."
}

variable "admin_principal_name" {
  type        = string
  description = "Display name of the Entra administrator."
}

variable "admin_principal_type" {
  type        = string
  description = "Kind of the Entra administrator: Group, User or ServicePrincipal."
}

variable "delegated_subnet_id" {
  type        = string
  description = "Subnet delegated to Microsoft.DBforPostgreSQL/flexibleServers."
}

variable "private_dns_zone_ids" {
  type        = map(string)
  description = "Private DNS zone ids by service."
}

variable "database_name" {
  type        = string
  description = "Name of the application database (the migrations and QP_DATABASE_URL use it)."
  default     = "quantum"
}

variable "sku_name" {
  type        = string
  description = "Compute SKU (tier prefix included)."
  default     = "GP_Standard_D2ds_v5"
}
