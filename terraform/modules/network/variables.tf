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

variable "vnet_name" {
  type        = string
  description = "Name of the virtual network."
}

variable "nsg_name" {
  type        = string
  description = "Name of the network security group shared by the subnets."
}

variable "address_prefix" {
  type        = string
  description = "Address space of the virtual network."
}

variable "subnet_prefixes" {
  type = object({
    function         = string
    apim             = string
    privateEndpoints = string
    postgres         = string
    ops              = string
  })
  description = "Address prefixes of the subnets."
}
