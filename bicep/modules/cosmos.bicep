// intent_ref: platform.estate
// Cosmos DB (NoSQL) for the audit trail in Azure: keys off, private endpoint only, container partitioned by
// /tenantId with TTL enabled so each record carries its tenant's retention (ADR 0012).

@description('Name of the Cosmos DB account.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Zone-redundant replicas (production).')
param zoneRedundant bool

@description('Name prefix of private endpoints (from abbreviations.json).')
param privateEndpointPrefix string

@description('Subnet holding the private endpoints.')
param privateEndpointSubnetId string

@description('Private DNS zone ids by service.')
param privateDnsZoneIds object

@description('Log Analytics workspace receiving diagnostics.')
param logAnalyticsWorkspaceId string

@description('Database name (QP_COSMOS_DATABASE).')
param databaseName string = 'quantum'

@description('Audit container name (QP_COSMOS_AUDIT_CONTAINER).')
param auditContainerName string = 'audit'

@description('Default TTL of audit records in seconds; -1 means no default, each record sets its own.')
param auditDefaultTtl int = -1

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' = {
  name: name
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    locations: [{ locationName: location, failoverPriority: 0, isZoneRedundant: zoneRedundant }]
    consistencyPolicy: { defaultConsistencyLevel: 'Session' }
    enableMultipleWriteLocations: false
    // Entra RBAC only: no primary keys, and keys could not change the schema even if they existed.
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: 'Disabled'
    isVirtualNetworkFilterEnabled: true
    backupPolicy: {
      type: 'Continuous'
      continuousModeProperties: { tier: 'Continuous7Days' }
    }
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-11-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: { id: databaseName }
  }
}

resource audit 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: auditContainerName
  properties: {
    resource: {
      id: auditContainerName
      partitionKey: { paths: ['/tenantId'], kind: 'Hash', version: 2 }
      defaultTtl: auditDefaultTtl
      // AUDIT_INDEXING_POLICY in shared/audit/cosmos.py (tests/infra compares them): the page order
      // (ORDER BY occurredAt DESC, id DESC) needs the composite index, without which every list and export answers 400.
      indexingPolicy: {
        indexingMode: 'consistent'
        automatic: true
        includedPaths: [{ path: '/*' }]
        excludedPaths: [{ path: '/detail/*' }, { path: '/"_etag"/?' }]
        compositeIndexes: [
          [
            { path: '/occurredAt', order: 'descending' }
            { path: '/id', order: 'descending' }
          ]
        ]
      }
    }
    options: {
      autoscaleSettings: { maxThroughput: 1000 }
    }
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
        name: 'sql'
        properties: { privateLinkServiceId: account.id, groupIds: ['Sql'] }
      }
    ]
  }
}

resource endpointZone 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [{ name: 'cosmos', properties: { privateDnsZoneId: privateDnsZoneIds.cosmos } }]
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: account
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
    metrics: [{ category: 'Requests', enabled: true }]
  }
}

output id string = account.id
output name string = account.name
output endpoint string = account.properties.documentEndpoint
