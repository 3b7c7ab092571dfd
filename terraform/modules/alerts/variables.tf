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

variable "action_group_name" {
  type        = string
  description = "Name of the action group."
}

variable "alert_prefix" {
  type        = string
  description = "Name prefix of the alert rules."
}

variable "alert_email" {
  type        = string
  description = "E-mail address notified by the action group."
}

variable "app_insights_id" {
  type        = string
  description = "Application Insights component the queries run against."
}
