// intent_ref: platform.estate
// Event Hubs: the namespace, the three hubs of DESIGN.md section 5 and one consumer group per consumer.

@description('Name of the Event Hubs namespace.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Names of the hubs to create.')
param eventHubNames array

@description('Consumer groups, one per consuming function: [{ hub, group }].')
param consumerGroups array

@minValue(1)
@maxValue(32)
@description('Partitions per hub.')
param partitionCount int

@minValue(1)
@maxValue(7)
@description('Retention per hub, in days.')
param retentionDays int

@description('Name prefix of private endpoints (from abbreviations.json).')
param privateEndpointPrefix string

@description('Subnet holding the private endpoints.')
param privateEndpointSubnetId string

@description('Private DNS zone ids by service.')
param privateDnsZoneIds object

@description('Log Analytics workspace receiving diagnostics.')
param logAnalyticsWorkspaceId string

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: { name: 'Standard', tier: 'Standard', capacity: 1 }
  properties: {
    // Entra only: no SAS keys exist to leak or rotate.
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Disabled'
    isAutoInflateEnabled: true
    maximumThroughputUnits: 10
  }
}

resource hubs 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = [for hub in eventHubNames: {
  parent: namespace
  name: hub
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: retentionDays
  }
}]

resource groups 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = [for item in consumerGroups: {
  name: '${name}/${item.hub}/${item.group}'
  properties: {}
  dependsOn: [hubs]
}]

resource endpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: '${privateEndpointPrefix}${name}'
  location: location
  tags: tags
  properties: {
    subnet: { id: privateEndpointSubnetId }
    privateLinkServiceConnections: [
      {
        name: 'namespace'
        properties: { privateLinkServiceId: namespace.id, groupIds: ['namespace'] }
      }
    ]
  }
}

resource endpointZone 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [{ name: 'eventhub', properties: { privateDnsZoneId: privateDnsZoneIds.eventhub } }]
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: namespace
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
    metrics: [{ category: 'AllMetrics', enabled: true }]
  }
}

output id string = namespace.id
output name string = namespace.name
