// intent_ref: platform.estate
// PostgreSQL Flexible Server: Entra-only authentication, VNet-injected (no public endpoint), the `quantum`
// database. The roles the migrations expect (qp_owner, qp_runtime, qp_platform) and the logins of the app's two
// identities (runtime: qp_runtime; control: qp_platform, ADR 0018) are created afterwards by the bootstrap in
// docs/runbooks/deploy.md, run by the Entra administrator set here. Neither identity is an administrator.

@description('Name of the server.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Zone-redundant high availability (production).')
param highAvailability bool

@minValue(7)
@maxValue(35)
@description('Days of point-in-time restore.')
param backupRetentionDays int

@minValue(32)
@maxValue(16384)
@description('Storage in GiB (grows automatically).')
param storageSizeGB int

@description('Entra tenant of the administrator.')
param entraTenantId string

@description('Object id of the Entra administrator (a group of platform operators).')
param adminObjectId string

@description('Display name of the Entra administrator.')
param adminPrincipalName string

@allowed(['Group', 'User', 'ServicePrincipal'])
@description('Kind of the Entra administrator.')
param adminPrincipalType string

@description('Subnet delegated to Microsoft.DBforPostgreSQL/flexibleServers.')
param delegatedSubnetId string

@description('Private DNS zone ids by service.')
param privateDnsZoneIds object

@description('Log Analytics workspace receiving diagnostics.')
param logAnalyticsWorkspaceId string

@description('Name of the application database (the migrations and QP_DATABASE_URL use it).')
param databaseName string = 'quantum'

@description('Compute SKU.')
param skuName string = 'Standard_D2ds_v5'

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: name
  location: location
  tags: tags
  sku: { name: skuName, tier: 'GeneralPurpose' }
  properties: {
    version: '16'
    // Entra only: there is no administrator password to store, leak or rotate.
    authConfig: {
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Disabled'
      tenantId: entraTenantId
    }
    storage: { storageSizeGB: storageSizeGB, autoGrow: 'Enabled' }
    backup: {
      backupRetentionDays: backupRetentionDays
      // Geo-redundant backups let a regional outage be restored elsewhere (docs/runbooks/disaster-recovery.md).
      geoRedundantBackup: 'Enabled'
    }
    network: {
      // VNet injection is the private path; the server has no public endpoint at all.
      delegatedSubnetResourceId: delegatedSubnetId
      privateDnsZoneArmResourceId: privateDnsZoneIds.postgres
      publicNetworkAccess: 'Disabled'
    }
    highAvailability: { mode: highAvailability ? 'ZoneRedundant' : 'Disabled' }
  }
}

resource administrator 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01' = {
  parent: server
  name: adminObjectId
  properties: {
    principalName: adminPrincipalName
    principalType: adminPrincipalType
    tenantId: entraTenantId
  }
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: server
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
  dependsOn: [administrator]
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: server
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
    metrics: [{ category: 'AllMetrics', enabled: true }]
  }
}

output id string = server.id
output name string = server.name
output fqdn string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
