# intent_ref: platform.estate
output "id" {
  description = "Id of the function app."
  value       = azurerm_linux_function_app.main.id
}

output "name" {
  description = "Name of the function app."
  value       = azurerm_linux_function_app.main.name
}

output "default_host_name" {
  description = "Host name of the production slot."
  value       = azurerm_linux_function_app.main.default_hostname
}

output "staging_host_name" {
  description = "Host name of the staging slot."
  value       = azurerm_linux_function_app_slot.staging.default_hostname
}
