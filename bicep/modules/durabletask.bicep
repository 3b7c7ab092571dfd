// intent_ref: platform.estate
// The Durable Functions backend (ADR 0024): a Durable Task Scheduler with the platform's task hub, reachable only
// through a private endpoint. Production takes the Dedicated SKU with three capacity units (zone redundant, the
// only SKU with high availability); dev takes the Consumption SKU (billed per action, no idle cost).
// terraform/modules/durabletask declares the same two resources through the azapi provider (azurerm has no type
// for them).

@description('Name of the scheduler (3-64 letters, digits or hyphens).')
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Task hub name; the same value as QP_TASK_HUB, which host.json reads as hubName.')
param taskHubName string

@description('Production: Dedicated SKU with three capacity units (zone redundant); otherwise the Consumption SKU.')
param dedicated bool

@description('Prefix of private endpoint names.')
param privateEndpointPrefix string

@description('Subnet that holds the private endpoints.')
param privateEndpointSubnetId string

@description('Private DNS zone ids by service (network module output).')
param privateDnsZoneIds object

resource scheduler 'Microsoft.DurableTask/schedulers@2026-02-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    sku: dedicated ? { name: 'Dedicated', capacity: 3 } : { name: 'Consumption' }
    // Private endpoint only: no public address is admitted.
    publicNetworkAccess: 'Disabled'
    ipAllowlist: []
  }
}

resource taskHub 'Microsoft.DurableTask/schedulers/taskHubs@2026-02-01' = {
  parent: scheduler
  name: taskHubName
  properties: {}
}

resource endpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: '${privateEndpointPrefix}${name}'
  location: location
  tags: tags
  properties: {
    subnet: { id: privateEndpointSubnetId }
    privateLinkServiceConnections: [
      {
        name: 'scheduler'
        properties: { privateLinkServiceId: scheduler.id, groupIds: ['scheduler'] }
      }
    ]
  }
}

resource endpointZone 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [{ name: 'durabletask', properties: { privateDnsZoneId: privateDnsZoneIds.durabletask } }]
  }
}

output name string = scheduler.name
// Without its trailing `/`, as Terraform's output gives it: the connection string's `Endpoint=` takes the bare origin.
var schedulerEndpoint = scheduler.properties.endpoint
output endpoint string = endsWith(schedulerEndpoint, '/') ? substring(schedulerEndpoint, 0, length(schedulerEndpoint) - 1) : schedulerEndpoint
output taskHubName string = taskHub.name
