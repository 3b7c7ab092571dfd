// intent_ref: platform.estate
// Every role assignment of the estate, in one place. The function app's identity gets data-plane roles only,
// each scoped to the one resource it needs; nobody gets keys because no resource has any enabled.

@description('Principal id of the function app identity.')
param functionPrincipalId string

@description('Storage account holding Durable state and artifacts.')
param storageAccountName string

@description('Event Hubs namespace; its hubs are the scopes of the Event Hubs roles.')
param eventHubNamespaceName string

@description('Cosmos DB account of the audit trail.')
param cosmosAccountName string

@description('Application Insights component the app writes telemetry to.')
param appInsightsName string

@description('Durable Task Scheduler holding the task hub (ADR 0024).')
param durableTaskSchedulerName string

@description('Key Vault holding the sealing key (ADR 0040).')
param keyVaultName string

// Built-in role definition ids (stable across clouds).
var roles = {
  // The host's own storage (locks, timer schedules, Event Hubs checkpoints, artifacts) and, kept on purpose, what
  // the Azure Storage Durable provider needs, so falling back to it is a host.json change (ADR 0024).
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // leases and checkpoints
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Azure Storage provider fallback: queues
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Azure Storage provider fallback: tables
  eventHubsDataSender: '2b629674-e913-4c01-ae53-ef4638d8f975'
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Entra-authenticated telemetry ingestion
  durableTaskDataContributor: '0ad04412-c4d5-4796-b79c-f76d14c8d402' // the Durable backend (ADR 0024)
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6' // reads the sealing key (ADR 0040)
}
// Cosmos DB Built-in Data Contributor: a data-plane (SQL) role, assigned in the account, not in ARM RBAC.
var cosmosDataContributor = '00000000-0000-0000-0000-000000000002'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource eventHubNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubNamespaceName
}

// The Event Hubs roles are granted per hub, never on the namespace: a namespace-wide Receiver would also read
// platform-events, every tenant's domain events, which nothing in the app consumes.
resource intentRequestsHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubNamespace
  name: 'intent-requests'
}

resource moduleWorkHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubNamespace
  name: 'module-work'
}

resource platformEventsHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubNamespace
  name: 'platform-events'
}

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' existing = {
  name: cosmosAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource scheduler 'Microsoft.DurableTask/schedulers@2026-02-01' existing = {
  name: durableTaskSchedulerName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource storageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in [
  roles.storageBlobDataOwner
  roles.storageQueueDataContributor
  roles.storageTableDataContributor
]: {
  scope: storage
  name: guid(storage.id, functionPrincipalId, role)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}]

// Dispatch puts built-in work on module-work (shared/engine/progress.py).
resource moduleWorkSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: moduleWorkHub
  name: guid(moduleWorkHub.id, functionPrincipalId, roles.eventHubsDataSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataSender)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The outbox relay and the event.emit module publish domain events (shared/events/relay.py, event_emit.py).
resource platformEventsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: platformEventsHub
  name: guid(platformEventsHub.id, functionPrincipalId, roles.eventHubsDataSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataSender)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The ingress function reads intent-requests (consumer group intake).
resource intentRequestsReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: intentRequestsHub
  name: guid(intentRequestsHub.id, functionPrincipalId, roles.eventHubsDataReceiver)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The module worker reads module-work (consumer group module-worker).
resource moduleWorkReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: moduleWorkHub
  name: guid(moduleWorkHub.id, functionPrincipalId, roles.eventHubsDataReceiver)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource telemetryRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: appInsights
  name: guid(appInsights.id, functionPrincipalId, roles.monitoringMetricsPublisher)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The host dispatches orchestrations, activities and entities of the task hub; Data Contributor also lets it
// query, purge and terminate instances (the Durable management API and the stuck-execution sweeper need that).
resource durableTaskRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: scheduler
  name: guid(scheduler.id, functionPrincipalId, roles.durableTaskDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.durableTaskDataContributor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Reads secrets of the one vault, which holds the sealing key only; App Service resolves the Key Vault reference
// with this identity (keyVaultReferenceIdentity).
resource keyVaultRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, functionPrincipalId, roles.keyVaultSecretsUser)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource cosmosRole 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-11-15' = {
  parent: cosmos
  name: guid(cosmos.id, functionPrincipalId, cosmosDataContributor)
  properties: {
    roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosDataContributor}'
    principalId: functionPrincipalId
    scope: cosmos.id
  }
}
