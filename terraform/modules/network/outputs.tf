# intent_ref: platform.estate
output "vnet_id" {
  description = "Id of the virtual network."
  value       = azurerm_virtual_network.main.id
}

output "function_subnet_id" {
  description = "Subnet of the function app's outbound integration."
  value       = azurerm_subnet.main["snet-function"].id
}

output "apim_subnet_id" {
  description = "Subnet of API Management's outbound integration."
  value       = azurerm_subnet.main["snet-apim"].id
}

output "private_endpoint_subnet_id" {
  description = "Subnet holding the private endpoints."
  value       = azurerm_subnet.main["snet-private-endpoints"].id
}

output "postgres_subnet_id" {
  description = "Subnet delegated to Postgres."
  value       = azurerm_subnet.main["snet-postgres"].id
}

output "ops_subnet_id" {
  description = "Subnet of the operators' runner."
  value       = azurerm_subnet.main["snet-ops"].id
}

output "private_dns_zone_ids" {
  description = "Private DNS zone ids by service."
  value       = { for key, zone in azurerm_private_dns_zone.main : key => zone.id }
}
