// intent_ref: platform.estate
// The virtual network every private path runs through, its subnets and the private DNS zones.

@description('Name of the virtual network.')
param vnetName string

@description('Name of the network security group shared by the subnets.')
param nsgName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Address space of the virtual network.')
param addressPrefix string

@description('Address prefixes of the subnets: function, apim, privateEndpoints, postgres, ops.')
param subnetPrefixes object

@description('Log Analytics workspace receiving diagnostics.')
param logAnalyticsWorkspaceId string

// privatelink zones resolve the private endpoints; Postgres (VNet-injected) uses its own zone. The order is the
// order of the privateDnsZoneIds output below.
var dnsZoneNames = [
  'privatelink.blob.${environment().suffixes.storage}'
  'privatelink.queue.${environment().suffixes.storage}'
  'privatelink.table.${environment().suffixes.storage}'
  'privatelink.servicebus.windows.net'
  'privatelink.documents.azure.com'
  'privatelink.postgres.database.azure.com'
  // The Durable Task Scheduler (ADR 0024): its endpoint <name>-<suffix>.<region>.durabletask.io resolves here.
  'privatelink.durabletask.io'
  // Key Vault (ADR 0040): the sealing key is read over this private path.
  'privatelink.vaultcore.azure.net'
]

resource nsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: nsgName
  location: location
  tags: tags
  properties: {
    // No inbound rules beyond the platform defaults: nothing in these subnets listens to the internet.
    securityRules: []
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: { addressPrefixes: [addressPrefix] }
    subnets: [
      {
        // Outbound integration of the function app (and its staging slot).
        name: 'snet-function'
        properties: {
          addressPrefix: subnetPrefixes.function
          networkSecurityGroup: { id: nsg.id }
          delegations: [{ name: 'web', properties: { serviceName: 'Microsoft.Web/serverFarms' } }]
        }
      }
      {
        // Outbound integration of API Management (StandardV2); the function app admits only this subnet.
        name: 'snet-apim'
        properties: {
          addressPrefix: subnetPrefixes.apim
          networkSecurityGroup: { id: nsg.id }
          serviceEndpoints: [{ service: 'Microsoft.Web' }]
          delegations: [{ name: 'web', properties: { serviceName: 'Microsoft.Web/serverFarms' } }]
        }
      }
      {
        name: 'snet-private-endpoints'
        properties: {
          addressPrefix: subnetPrefixes.privateEndpoints
          networkSecurityGroup: { id: nsg.id }
        }
      }
      {
        name: 'snet-postgres'
        properties: {
          addressPrefix: subnetPrefixes.postgres
          networkSecurityGroup: { id: nsg.id }
          delegations: [{ name: 'postgres', properties: { serviceName: 'Microsoft.DBforPostgreSQL/flexibleServers' } }]
        }
      }
      {
        // Operators' runner (bootstrap, migrations, restores): the only way to reach Postgres.
        name: 'snet-ops'
        properties: {
          addressPrefix: subnetPrefixes.ops
          networkSecurityGroup: { id: nsg.id }
        }
      }
    ]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for zone in dnsZoneNames: {
  name: zone
  location: 'global'
  tags: tags
}]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (zone, i) in dnsZoneNames: {
  parent: zones[i]
  name: vnetName
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnet.id }
  }
}]

resource vnetDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: vnet
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
    metrics: [{ category: 'AllMetrics', enabled: true }]
  }
}

resource nsgDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: nsg
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
  }
}

output vnetId string = vnet.id
output functionSubnetId string = vnet.properties.subnets[0].id
output apimSubnetId string = vnet.properties.subnets[1].id
output privateEndpointSubnetId string = vnet.properties.subnets[2].id
output postgresSubnetId string = vnet.properties.subnets[3].id
output opsSubnetId string = vnet.properties.subnets[4].id
output privateDnsZoneIds object = {
  blob: zones[0].id
  queue: zones[1].id
  table: zones[2].id
  eventhub: zones[3].id
  cosmos: zones[4].id
  postgres: zones[5].id
  durabletask: zones[6].id
  keyvault: zones[7].id
}
