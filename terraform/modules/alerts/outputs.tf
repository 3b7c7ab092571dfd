# intent_ref: platform.estate
output "action_group_id" {
  description = "Id of the action group."
  value       = azurerm_monitor_action_group.main.id
}
