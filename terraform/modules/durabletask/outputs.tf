# intent_ref: platform.estate
output "id" {
  description = "Resource id of the scheduler."
  value       = azapi_resource.scheduler.id
}

output "name" {
  description = "Name of the scheduler."
  value       = azapi_resource.scheduler.name
}

output "endpoint" {
  description = "Endpoint of the scheduler."
  value       = trimsuffix(azapi_resource.scheduler.output.properties.endpoint, "/")
}

output "task_hub_name" {
  description = "Task hub name."
  value       = azapi_resource.task_hub.name
}
