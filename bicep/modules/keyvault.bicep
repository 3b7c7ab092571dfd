// intent_ref: platform.estate
// Key Vault for the sealing key (ADR 0040): RBAC authorization only, purge protection, private endpoint only. The
// secret qp-sealing-key is not written by this template: a deployment has no stable random value to give it (a
// fresh one on every run would replace the key and lose every sealed secret), so operators create it once
// (docs/runbooks/secrets.md) and the app reads it through a Key Vault reference.

@description('Name of the Key Vault.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Name prefix of private endpoints (from abbreviations.json).')
param privateEndpointPrefix string

@description('Subnet holding the private endpoints.')
param privateEndpointSubnetId string

@description('Private DNS zone ids by service.')
param privateDnsZoneIds object

@description('Log Analytics workspace receiving diagnostics.')
param logAnalyticsWorkspaceId string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // A purged key would make every sealed secret unreadable.
    enablePurgeProtection: true
    publicNetworkAccess: 'Disabled'
    networkAcls: { defaultAction: 'Deny', bypass: 'None' }
  }
}

resource endpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: '${privateEndpointPrefix}${name}'
  location: location
  tags: tags
  properties: {
    subnet: { id: privateEndpointSubnetId }
    privateLinkServiceConnections: [
      {
        name: 'vault'
        properties: { privateLinkServiceId: vault.id, groupIds: ['vault'] }
      }
    ]
  }
}

resource endpointZone 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [{ name: 'keyvault', properties: { privateDnsZoneId: privateDnsZoneIds.keyvault } }]
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
    metrics: [{ category: 'AllMetrics', enabled: true }]
  }
}

output id string = vault.id
output name string = vault.name
