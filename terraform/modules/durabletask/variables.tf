# intent_ref: platform.estate
variable "subscription_id" {
  type        = string
  description = "Subscription of the estate (part of the scheduler's resource id)."
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

variable "endpoint" {
  type        = string
  description = "Endpoint of the scheduler (the Bicep DURABLE_TASK_SCHEDULER_ENDPOINT output)."
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
