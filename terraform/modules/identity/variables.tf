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
  description = "Name of the user-assigned managed identity."
}
