// intent_ref: platform.estate
// Every role assignment of the estate, in one place. The function app's identity gets data-plane roles only,
// each scoped to the one resource it needs; nobody gets keys because no resource has any enabled.

@description('Principal id of the function app identity.')
param functionPrincipalId string

@description('Storage account holding Durable state and artifacts.')
param storageAccountName string

@description('Event Hubs namespace.')
param eventHubNamespaceName string

@description('Cosmos DB account of the audit trail.')
param cosmosAccountName string

@description('Application Insights component the app writes telemetry to.')
param appInsightsName string

// Built-in role definition ids (stable across clouds).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Durable Functions manages its lease blobs
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Durable control and work-item queues
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Durable history and instances tables
  eventHubsDataSender: '2b629674-e913-4c01-ae53-ef4638d8f975'
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Entra-authenticated telemetry ingestion
}
// Cosmos DB Built-in Data Contributor: a data-plane (SQL) role, assigned in the account, not in ARM RBAC.
var cosmosDataContributor = '00000000-0000-0000-0000-000000000002'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource eventHubNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubNamespaceName
}

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' existing = {
  name: cosmosAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
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

resource eventHubRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in [
  roles.eventHubsDataSender
  roles.eventHubsDataReceiver
]: {
  scope: eventHubNamespace
  name: guid(eventHubNamespace.id, functionPrincipalId, role)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}]

resource telemetryRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: appInsights
  name: guid(appInsights.id, functionPrincipalId, roles.monitoringMetricsPublisher)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
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
