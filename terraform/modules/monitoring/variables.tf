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

variable "log_analytics_name" {
  type        = string
  description = "Name of the Log Analytics workspace."
}

variable "app_insights_name" {
  type        = string
  description = "Name of the Application Insights component."
}

variable "retention_in_days" {
  type        = number
  description = "Days Log Analytics keeps data."
  default     = 90

  validation {
    condition     = var.retention_in_days >= 30 && var.retention_in_days <= 730
    error_message = "retention_in_days must be between 30 and 730."
  }
}
