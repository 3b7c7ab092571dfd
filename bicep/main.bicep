// intent_ref: platform.estate
// The whole Quantum Platform estate: one resource group and the modules that fill it.
// Every name comes from abbreviations.json plus the environment name and resourceToken; terraform/ builds the
// same names from the same file, so either stack can describe (and adopt) the same estate.
targetScope = 'subscription'

@minLength(1)
@maxLength(16)
@description('Name of the environment (azd environment name), e.g. dev or prod; part of every resource name.')
param environmentName string

@allowed(['dev', 'prod'])
@description('Kind of environment; becomes QP_ENVIRONMENT and selects production-grade options (zone redundancy, HA).')
param environmentType string = 'dev'

@minLength(1)
@description('Azure region of every resource.')
param location string

@minLength(5)
@maxLength(13)
@description('Suffix that makes globally unique names unique. Pass the same value to terraform to describe the same estate.')
param resourceToken string = toLower(uniqueString(subscription().id, environmentName, location))

// Entra v2 access tokens (the only ones the app accepts, ADR 0010) always carry the API's client id as `aud`, never
// its app id URI: the gateway's validate-jwt and the app's audience list take this value. No default: a wrong one
// answers every call 401.
@minLength(36)
@maxLength(36)
@description('Application (client) id of the API app registration: the `aud` of its v2 access tokens (GUID).')
param apiClientId string

@description('Entra tenant of the API app registration and of the Postgres administrator.')
param entraTenantId string = tenant().tenantId

@minLength(36)
@maxLength(36)
@description('Object id of the Entra group (or principal) that administers Postgres and runs the role bootstrap.')
param postgresAdminObjectId string

@minLength(1)
@description('Display name of that Entra group or principal, as Postgres knows it.')
param postgresAdminPrincipalName string

@allowed(['Group', 'User', 'ServicePrincipal'])
@description('Kind of the Postgres Entra administrator.')
param postgresAdminPrincipalType string = 'Group'

@minLength(1)
@description('Publisher e-mail shown by API Management.')
param publisherEmail string

@minLength(1)
@description('Publisher name shown by API Management.')
param publisherName string

@minLength(3)
@description('E-mail address the alert action group notifies.')
param alertEmail string

@minValue(1)
@maxValue(32)
@description('Partitions per event hub (fixed after creation on the Standard tier).')
param eventHubPartitionCount int = 4

@minValue(1)
@maxValue(7)
@description('Days an event stays in each hub (Standard tier allows 1-7).')
param eventHubRetentionDays int = 1

@minValue(1)
@maxValue(100)
@description('Maximum instances the Elastic Premium plan scales out to.')
param functionMaxElasticWorkers int = 20

@minValue(1)
@maxValue(200)
@description('Connections per instance in the Postgres pool (QP_DATABASE_POOL_MAX).')
param databasePoolMax int = 10

@minLength(1)
@maxLength(127)
@description('Key Vault secret holding the current sealing key (QP_SEALING_KEY); a rotation names a new secret here (docs/runbooks/secrets.md).')
param sealingKeySecretName string = 'qp-sealing-key'

@maxLength(127)
@description('Key Vault secret holding the sealing key before a rotation (QP_SEALING_KEY_PREVIOUS) while values are sealed again; empty otherwise.')
param previousSealingKeySecretName string = ''

@minValue(7)
@maxValue(35)
@description('Days of Postgres point-in-time restore.')
param postgresBackupRetentionDays int = 14

@minValue(32)
@maxValue(16384)
@description('Postgres storage in GiB.')
param postgresStorageSizeGB int = 64

@minValue(1)
@description('Requests per minute per Entra tenant (tid) at the API Management edge.')
param apimRateLimitPerMinute int = 1200

@minLength(3)
@maxLength(45)
// Hyphens are dropped from the default: azd environment names carry them (qp-dev), the task hub takes none.
@description('Durable Functions task hub name (QP_TASK_HUB); letters and digits, starting with a letter.')
param taskHubName string = 'Quantum${replace(environmentName, '-', '')}'

@description('Address space of the virtual network that carries every private path.')
param vnetAddressPrefix string = '10.40.0.0/16'

@description('Address prefixes of the subnets (each inside vnetAddressPrefix): function, apim, privateEndpoints, postgres, ops.')
param subnetPrefixes object = {
  function: '10.40.0.0/24'
  apim: '10.40.1.0/24'
  privateEndpoints: '10.40.2.0/24'
  postgres: '10.40.3.0/24'
  ops: '10.40.4.0/24'
}

var abbrs = loadJsonContent('abbreviations.json')
var tags = { 'azd-env-name': environmentName, application: 'quantum-platform', environment: environmentType }

// The naming table: terraform/locals.tf builds the same map, and tests/infra compares the two.
var names = {
  resourceGroup: '${abbrs.resourcesResourceGroups}${environmentName}'
  identity: '${abbrs.managedIdentityUserAssignedIdentities}${environmentName}-${resourceToken}'
  controlIdentity: '${abbrs.managedIdentityUserAssignedIdentities}${environmentName}-${resourceToken}-control'
  logAnalytics: '${abbrs.operationalInsightsWorkspaces}${environmentName}-${resourceToken}'
  appInsights: '${abbrs.insightsComponents}${environmentName}-${resourceToken}'
  storage: '${abbrs.storageStorageAccounts}${resourceToken}'
  eventHubNamespace: '${abbrs.eventHubNamespaces}${environmentName}-${resourceToken}'
  postgres: '${abbrs.dBforPostgreSQLServers}${environmentName}-${resourceToken}'
  cosmos: '${abbrs.documentDBDatabaseAccounts}${environmentName}-${resourceToken}'
  plan: '${abbrs.webServerFarms}${environmentName}-${resourceToken}'
  functionApp: '${abbrs.webSitesFunctions}${environmentName}-${resourceToken}'
  apim: '${abbrs.apiManagementService}${environmentName}-${resourceToken}'
  vnet: '${abbrs.networkVirtualNetworks}${environmentName}-${resourceToken}'
  nsg: '${abbrs.networkNetworkSecurityGroups}${environmentName}-${resourceToken}'
  actionGroup: '${abbrs.insightsActionGroups}${environmentName}-${resourceToken}'
  alertPrefix: '${abbrs.insightsAlerts}${environmentName}-${resourceToken}'
  durableTaskScheduler: '${abbrs.durableTaskSchedulers}${environmentName}-${resourceToken}'
  // At most 24 characters: the token alone (13) after the prefix.
  keyVault: '${abbrs.keyVaultVaults}${resourceToken}'
}

// The hub names are fixed by the code (DESIGN.md section 5); one consumer group per consuming function, and only
// those: nothing in the app reads platform-events (webhooks are sent from the outbox, ADR 0030), so it has none.
var eventHubNames = ['intent-requests', 'module-work', 'platform-events']
var eventHubConsumerGroups = [
  { hub: 'intent-requests', group: 'intake' }
  { hub: 'module-work', group: 'module-worker' }
]

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module network 'modules/network.bicep' = {
  scope: rg
  name: 'network'
  params: {
    vnetName: names.vnet
    nsgName: names.nsg
    location: location
    tags: tags
    addressPrefix: vnetAddressPrefix
    subnetPrefixes: subnetPrefixes
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module monitoring 'modules/monitoring.bicep' = {
  scope: rg
  name: 'monitoring'
  params: {
    logAnalyticsName: names.logAnalytics
    appInsightsName: names.appInsights
    location: location
    tags: tags
  }
}

module identity 'modules/identity.bicep' = {
  scope: rg
  name: 'identity'
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

// The control plane's own identity: a second Postgres login, member of qp_platform only (ADR 0018). It holds no
// Azure role: the app reaches every other service with the runtime identity above.
module controlIdentity 'modules/identity.bicep' = {
  scope: rg
  name: 'control-identity'
  params: {
    name: names.controlIdentity
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  scope: rg
  name: 'storage'
  params: {
    name: names.storage
    location: location
    tags: tags
    privateEndpointPrefix: abbrs.networkPrivateEndpoints
    privateEndpointSubnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneIds: network.outputs.privateDnsZoneIds
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module eventHubsModule 'modules/eventhubs.bicep' = {
  scope: rg
  name: 'eventhubs'
  params: {
    name: names.eventHubNamespace
    location: location
    tags: tags
    eventHubNames: eventHubNames
    consumerGroups: eventHubConsumerGroups
    partitionCount: eventHubPartitionCount
    retentionDays: eventHubRetentionDays
    privateEndpointPrefix: abbrs.networkPrivateEndpoints
    privateEndpointSubnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneIds: network.outputs.privateDnsZoneIds
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module postgres 'modules/postgres.bicep' = {
  scope: rg
  name: 'postgres'
  params: {
    name: names.postgres
    location: location
    tags: tags
    highAvailability: environmentType == 'prod'
    backupRetentionDays: postgresBackupRetentionDays
    storageSizeGB: postgresStorageSizeGB
    entraTenantId: entraTenantId
    adminObjectId: postgresAdminObjectId
    adminPrincipalName: postgresAdminPrincipalName
    adminPrincipalType: postgresAdminPrincipalType
    delegatedSubnetId: network.outputs.postgresSubnetId
    privateDnsZoneIds: network.outputs.privateDnsZoneIds
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module cosmos 'modules/cosmos.bicep' = {
  scope: rg
  name: 'cosmos'
  params: {
    name: names.cosmos
    location: location
    tags: tags
    zoneRedundant: environmentType == 'prod'
    privateEndpointPrefix: abbrs.networkPrivateEndpoints
    privateEndpointSubnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneIds: network.outputs.privateDnsZoneIds
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

// The Durable backend (ADR 0024): Durable Task Scheduler, Dedicated with three capacity units in prod.
module durableTask 'modules/durabletask.bicep' = {
  scope: rg
  name: 'durabletask'
  params: {
    name: names.durableTaskScheduler
    location: location
    tags: tags
    taskHubName: taskHubName
    dedicated: environmentType == 'prod'
    privateEndpointPrefix: abbrs.networkPrivateEndpoints
    privateEndpointSubnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneIds: network.outputs.privateDnsZoneIds
  }
}

// The sealing key of the secrets the database keeps (ADR 0040); the app reads it by a Key Vault reference.
module keyVault 'modules/keyvault.bicep' = {
  scope: rg
  name: 'keyvault'
  params: {
    name: names.keyVault
    location: location
    tags: tags
    privateEndpointPrefix: abbrs.networkPrivateEndpoints
    privateEndpointSubnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneIds: network.outputs.privateDnsZoneIds
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module functionApp 'modules/functionapp.bicep' = {
  scope: rg
  name: 'functionapp'
  params: {
    planName: names.plan
    name: names.functionApp
    location: location
    tags: tags
    maxElasticWorkers: functionMaxElasticWorkers
    zoneRedundant: environmentType == 'prod'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    identityName: identity.outputs.name
    controlIdentityId: controlIdentity.outputs.id
    controlIdentityClientId: controlIdentity.outputs.clientId
    controlIdentityName: controlIdentity.outputs.name
    storageAccountName: storage.outputs.name
    blobEndpoint: storage.outputs.blobEndpoint
    eventHubNamespaceName: eventHubsModule.outputs.name
    postgresFqdn: postgres.outputs.fqdn
    postgresDatabase: postgres.outputs.databaseName
    cosmosEndpoint: cosmos.outputs.endpoint
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    environmentType: environmentType
    taskHubName: durableTask.outputs.taskHubName
    durableTaskSchedulerEndpoint: durableTask.outputs.endpoint
    keyVaultName: keyVault.outputs.name
    sealingKeySecretName: sealingKeySecretName
    previousSealingKeySecretName: previousSealingKeySecretName
    apiClientId: apiClientId
    operatorTenantId: entraTenantId
    databasePoolMax: databasePoolMax
    functionSubnetId: network.outputs.functionSubnetId
    apimSubnetId: network.outputs.apimSubnetId
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module apim 'modules/apim.bicep' = {
  scope: rg
  name: 'apim'
  params: {
    name: names.apim
    location: location
    tags: tags
    publisherEmail: publisherEmail
    publisherName: publisherName
    entraTenantId: entraTenantId
    apiClientId: apiClientId
    functionAppHostName: functionApp.outputs.defaultHostName
    rateLimitPerMinute: apimRateLimitPerMinute
    subnetId: network.outputs.apimSubnetId
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module rbac 'modules/rbac.bicep' = {
  scope: rg
  name: 'rbac'
  params: {
    functionPrincipalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    eventHubNamespaceName: eventHubsModule.outputs.name
    cosmosAccountName: cosmos.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    durableTaskSchedulerName: durableTask.outputs.name
    keyVaultName: keyVault.outputs.name
  }
}

module alerts 'modules/alerts.bicep' = {
  scope: rg
  name: 'alerts'
  params: {
    actionGroupName: names.actionGroup
    alertPrefix: names.alertPrefix
    location: location
    tags: tags
    alertEmail: alertEmail
    appInsightsId: monitoring.outputs.appInsightsId
  }
}

module workbook 'modules/workbook.bicep' = {
  scope: rg
  name: 'workbook'
  params: {
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = entraTenantId
output AZURE_RESOURCE_GROUP string = rg.name
output RESOURCE_TOKEN string = resourceToken
output FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_STAGING_HOSTNAME string = functionApp.outputs.stagingHostName
output API_GATEWAY_URL string = apim.outputs.gatewayUrl
output MANAGED_IDENTITY_NAME string = identity.outputs.name
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output CONTROL_IDENTITY_NAME string = controlIdentity.outputs.name
output CONTROL_IDENTITY_CLIENT_ID string = controlIdentity.outputs.clientId
output POSTGRES_FQDN string = postgres.outputs.fqdn
output POSTGRES_DATABASE string = postgres.outputs.databaseName
output COSMOS_ENDPOINT string = cosmos.outputs.endpoint
output STORAGE_BLOB_ENDPOINT string = storage.outputs.blobEndpoint
output EVENTHUB_NAMESPACE_FQDN string = '${eventHubsModule.outputs.name}.servicebus.windows.net'
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.appInsightsName
output DURABLE_TASK_SCHEDULER_ENDPOINT string = durableTask.outputs.endpoint
