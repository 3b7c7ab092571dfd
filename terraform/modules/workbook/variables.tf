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

variable "app_insights_id" {
  type        = string
  description = "Application Insights component the workbook reads."
}

variable "display_name" {
  type        = string
  description = "Display name of the workbook."
  default     = "Quantum Platform operations"
}
