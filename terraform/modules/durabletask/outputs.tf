# intent_ref: platform.estate
output "id" {
  description = "Resource id of the adopted scheduler."
  value       = local.scheduler_id
}

output "name" {
  description = "Name of the scheduler."
  value       = var.name
}

output "endpoint" {
  description = "Endpoint of the scheduler."
  value       = trimsuffix(var.endpoint, "/")
}

output "task_hub_name" {
  description = "Task hub name."
  value       = var.task_hub_name
}
