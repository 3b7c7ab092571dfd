# intent_ref: platform.estate
variable "resource_group_id" {
  type        = string
  description = "Resource group of the estate (the scheduler's parent)."
}

variable "dedicated" {
  type        = bool
  description = "Production: Dedicated SKU with three capacity units (zone redundant); otherwise the Consumption SKU."
}

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
  description = "Name of the Durable Task Scheduler, from the shared naming table."
}

variable "task_hub_name" {
  type        = string
  description = "Task hub name (QP_TASK_HUB); the scheduler holds a task hub of this name."
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
