# intent_ref: platform.estate
# Every role assignment of the estate, in one place. The function app's identity gets data-plane roles only,
# each scoped to the one resource it needs; nobody gets keys because no resource has any enabled.

locals {
  assignments = {
    # The host's own storage (locks, timer schedules, Event Hubs checkpoints, artifacts) and, kept on purpose, what
    # the Azure Storage Durable provider needs, so falling back to it is a host.json change (ADR 0024).
    storage_blob_data_owner        = { scope = var.storage_account_id, role = "Storage Blob Data Owner" }
    storage_queue_data_contributor = { scope = var.storage_account_id, role = "Storage Queue Data Contributor" }
    storage_table_data_contributor = { scope = var.storage_account_id, role = "Storage Table Data Contributor" }
    # Per hub, never on the namespace: a namespace-wide Receiver would also read platform-events, every tenant's
    # domain events, which nothing in the app consumes. Dispatch sends to module-work, the outbox relay and
    # event.emit to platform-events; the ingress function reads intent-requests, the module worker module-work.
    event_hubs_data_sender_module_work       = { scope = var.event_hub_ids["module-work"], role = "Azure Event Hubs Data Sender" }
    event_hubs_data_sender_platform_events   = { scope = var.event_hub_ids["platform-events"], role = "Azure Event Hubs Data Sender" }
    event_hubs_data_receiver_intent_requests = { scope = var.event_hub_ids["intent-requests"], role = "Azure Event Hubs Data Receiver" }
    event_hubs_data_receiver_module_work     = { scope = var.event_hub_ids["module-work"], role = "Azure Event Hubs Data Receiver" }
    # Entra-authenticated telemetry ingestion.
    monitoring_metrics_publisher = { scope = var.app_insights_id, role = "Monitoring Metrics Publisher" }
    # The Durable backend (ADR 0024): dispatch, query, purge and terminate instances of the task hub.
    durable_task_data_contributor = { scope = var.durable_task_scheduler_id, role = "Durable Task Data Contributor" }
    # Reads the sealing key (ADR 0040); App Service resolves the Key Vault reference with this identity.
    key_vault_secrets_user = { scope = var.key_vault_id, role = "Key Vault Secrets User" }
  }
  # Cosmos DB Built-in Data Contributor: a data-plane (SQL) role, assigned in the account, not in ARM RBAC.
  cosmos_data_contributor = "00000000-0000-0000-0000-000000000002"
}

resource "azurerm_role_assignment" "function" {
  for_each             = local.assignments
  scope                = each.value.scope
  role_definition_name = each.value.role
  principal_id         = var.function_principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_cosmosdb_sql_role_assignment" "function" {
  resource_group_name = var.resource_group_name
  account_name        = var.cosmos_account_name
  role_definition_id  = "${var.cosmos_account_id}/sqlRoleDefinitions/${local.cosmos_data_contributor}"
  principal_id        = var.function_principal_id
  scope               = var.cosmos_account_id
}
