// intent_ref: platform.estate
// The function app on an Elastic Premium plan with a `staging` slot for blue-green swaps. Every binding and
// client reaches its service with the runtime identity (the control identity is only the control plane's Postgres
// login, ADR 0018): the settings hold names and endpoints, never keys.

@description('Name of the Elastic Premium plan.')
param planName string

@description('Name of the function app.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@minValue(1)
@maxValue(100)
@description('Maximum instances of the plan.')
param maxElasticWorkers int

@description('Spread the plan over availability zones (production; needs at least 3 instances).')
param zoneRedundant bool

@description('Resource id of the runtime user-assigned identity.')
param identityId string

@description('Client id of the runtime user-assigned identity.')
param identityClientId string

@description('Name of the identity, which is also its Postgres login name.')
param identityName string

@description('Resource id of the control plane\'s user-assigned identity (its own Postgres login, ADR 0018).')
param controlIdentityId string

@description('Client id of the control plane\'s identity: the app asks for its token as that login\'s password.')
param controlIdentityClientId string

@description('Name of the control plane\'s identity, which is also its Postgres login name.')
param controlIdentityName string

@description('Storage account holding Durable Functions state and artifacts.')
param storageAccountName string

@description('Blob endpoint of that account (QP_BLOB_ACCOUNT_URL).')
param blobEndpoint string

@description('Event Hubs namespace name.')
param eventHubNamespaceName string

@description('Postgres server FQDN.')
param postgresFqdn string

@description('Postgres database name.')
param postgresDatabase string

@description('Cosmos DB account endpoint (QP_COSMOS_ENDPOINT).')
param cosmosEndpoint string

@description('Application Insights connection string (not a secret: ingestion requires an Entra token).')
param appInsightsConnectionString string

@allowed(['dev', 'prod'])
@description('QP_ENVIRONMENT.')
param environmentType string

@description('Durable Functions task hub (QP_TASK_HUB).')
param taskHubName string

@description('Endpoint of the Durable Task Scheduler that holds the task hub (ADR 0024).')
param durableTaskSchedulerEndpoint string

@minLength(36)
@maxLength(36)
@description('Application (client) id of the API registration: the one accepted token audience (QP_AUTH_AUDIENCE).')
param apiClientId string

@description('The operators\' own Entra tenant, whose tokens alone may carry Platform.Admin (QP_OPERATOR_ENTRA_TENANT_ID).')
param operatorTenantId string

@description('QP_DATABASE_POOL_MAX.')
param databasePoolMax int

@description('Subnet for the outbound VNet integration.')
param functionSubnetId string

@description('API Management integration subnet: the only source admitted to the production site.')
param apimSubnetId string

@description('Log Analytics workspace receiving diagnostics.')
param logAnalyticsWorkspaceId string

@description('Key Vault holding the sealing key (qp-sealing-key, ADR 0040).')
param keyVaultName string

@description('Key Vault secret holding the current sealing key (QP_SEALING_KEY).')
param sealingKeySecretName string

@description('Key Vault secret holding the sealing key before a rotation (QP_SEALING_KEY_PREVIOUS); empty otherwise.')
param previousSealingKeySecretName string

// Every setting shared/config.py reads (tests/infra checks this against Settings.model_fields), plus the
// runtime's identity-based connections. Local-only settings (QP_BLOB_CONNECTION_STRING, QP_DATABASE_OWNER_URL)
// are intentionally absent.
var appSettings = [
  { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
  { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'python' }
  { name: 'AzureWebJobsFeatureFlags', value: 'EnableWorkerIndexing' }
  // HTTP streams: the gateway takes a FastAPI Request and streams its answer (server-sent events, ADR 0031).
  { name: 'PYTHON_ENABLE_INIT_INDEXING', value: '1' }
  // No Azure Files content share (it needs an account key): the package runs from the deployment zip.
  { name: 'WEBSITE_RUN_FROM_PACKAGE', value: '1' }
  { name: 'AzureWebJobsStorage__accountName', value: storageAccountName }
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
  { name: 'EventHubConnection__fullyQualifiedNamespace', value: '${eventHubNamespaceName}.servicebus.windows.net' }
  { name: 'EventHubConnection__credential', value: 'managedidentity' }
  { name: 'EventHubConnection__clientId', value: identityClientId }
  // DefaultAzureCredential in the app (runtime Postgres token, blob, Cosmos) picks the runtime identity from this;
  // with two identities attached, none is a default.
  { name: 'AZURE_CLIENT_ID', value: identityClientId }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'Authorization=AAD;ClientId=${identityClientId}' }
  { name: 'QP_ENVIRONMENT', value: environmentType }
  { name: 'QP_DATABASE_URL', value: 'host=${postgresFqdn} port=5432 dbname=${postgresDatabase} user=${identityName} sslmode=require' }
  // The control plane connects as its own identity: the runtime login cannot become qp_platform (ADR 0018).
  { name: 'QP_DATABASE_CONTROL_URL', value: 'host=${postgresFqdn} port=5432 dbname=${postgresDatabase} user=${controlIdentityName} sslmode=require' }
  { name: 'QP_DATABASE_CONTROL_CLIENT_ID', value: controlIdentityClientId }
  { name: 'QP_DATABASE_ENTRA_AUTH', value: 'true' }
  { name: 'QP_DATABASE_POOL_MAX', value: string(databasePoolMax) }
  { name: 'QP_DATABASE_POOL_TIMEOUT_S', value: '3' }
  { name: 'QP_DATABASE_CONNECT_TIMEOUT_S', value: '2' }
  // Half the pool per tenant: one tenant's burst always leaves connections for the others.
  { name: 'QP_TENANT_MAX_CONCURRENT_REQUESTS', value: string(max(1, databasePoolMax / 2)) }
  { name: 'QP_BLOB_ACCOUNT_URL', value: blobEndpoint }
  { name: 'QP_ARTIFACTS_CONTAINER', value: 'artifacts' }
  { name: 'QP_TASK_HUB', value: taskHubName }
  // host.json's durableTask.storageProvider (azureManaged) names this setting: the scheduler endpoint and the
  // runtime identity, no key (ADR 0024). The task hub comes from hubName (QP_TASK_HUB).
  { name: 'DURABLE_TASK_SCHEDULER_CONNECTION', value: 'Endpoint=${durableTaskSchedulerEndpoint};Authentication=ManagedIdentity;ClientID=${identityClientId}' }
  { name: 'QP_EVENTHUB_BACKEND', value: 'azure' }
  { name: 'QP_AUDIT_BACKEND', value: 'cosmos' }
  { name: 'QP_COSMOS_ENDPOINT', value: cosmosEndpoint }
  { name: 'QP_COSMOS_DATABASE', value: 'quantum' }
  { name: 'QP_COSMOS_AUDIT_CONTAINER', value: 'audit' }
  { name: 'QP_RATE_LIMIT_PER_MINUTE', value: '600' }
  { name: 'QP_RATE_LIMIT_BURST', value: '100' }
  { name: 'QP_MAX_BODY_BYTES', value: '1048576' }
  { name: 'QP_MAX_ORCHESTRATION_INPUT_BYTES', value: '1000000' }
  { name: 'QP_REGISTRY_MAX_DEFINITION_BYTES', value: '262144' }
  { name: 'QP_REGISTRY_MAX_STEPS', value: '200' }
  { name: 'QP_REGISTRY_MAX_DEPTH', value: '32' }
  { name: 'QP_PAYLOAD_INLINE_MAX_BYTES', value: '65536' }
  { name: 'QP_TASK_TOKEN_TTL_S', value: '86400' }
  // Resolved by App Service with keyVaultReferenceIdentity (the runtime identity); never written here (ADR 0040).
  // Both named by parameters, so that a rotation lives in the stack: one set by hand was undone by the next run.
  { name: 'QP_SEALING_KEY', value: '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${sealingKeySecretName})' }
  { name: 'QP_SEALING_KEY_PREVIOUS', value: empty(previousSealingKeySecretName) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${previousSealingKeySecretName})' }
  { name: 'QP_DISPATCH_RESULT_WAIT_MS', value: '250' }
  { name: 'QP_DEFAULT_MAX_CONCURRENT_EXECUTIONS', value: '100' }
  { name: 'QP_DEFAULT_MAX_WEBHOOK_SUBSCRIPTIONS', value: '25' }
  // Below the 4-minute idle timeout of the load balancers in front of the app and API Management (ADR 0031).
  { name: 'QP_EVENT_STREAM_KEEPALIVE_S', value: '15' }
  { name: 'QP_EVENT_STREAM_MAX_S', value: '220' }
  { name: 'QP_EVENT_STREAMS_PER_TENANT', value: '100' }
  // Loopback and private addresses are the platform's own services here: no tenant step may reach them.
  { name: 'QP_ALLOW_PRIVATE_NETWORK_HOSTS', value: 'false' }
  // Telemetry goes to Application Insights (its connection string is set above); no local file in Azure.
  { name: 'QP_TELEMETRY_FILE', value: '' }
  // A span per SQL statement costs more than half a busy instance's throughput: on only to diagnose.
  { name: 'QP_TELEMETRY_SQL_SPANS', value: 'false' }
  // Multi-tenant Entra metadata: the issuer is a {tenantid} template checked against each token's tid.
  { name: 'QP_AUTH_METADATA_URL', value: '${environment().authentication.loginEndpoint}organizations/v2.0/.well-known/openid-configuration' }
  // v2 tokens only (ADR 0010), whose `aud` is always the API's client id: the app id URI would never match.
  { name: 'QP_AUTH_AUDIENCE', value: apiClientId }
  // The API is multi-tenant: a customer's administrators can assign its Platform.Admin role in their directory.
  { name: 'QP_OPERATOR_ENTRA_TENANT_ID', value: operatorTenantId }
  { name: 'QP_AUTH_LEEWAY_S', value: '30' }
  { name: 'QP_AUTH_MAX_TOKEN_LIFETIME_S', value: '7200' }
  { name: 'QP_AUTH_JWKS_COOLDOWN_S', value: '60' }
]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'elastic'
  sku: { name: 'EP1', tier: 'ElasticPremium' }
  properties: {
    // checkov:skip=CKV_AZURE_225: zone redundancy is on for prod (zoneRedundant); dev runs in one zone to keep its minimum at one instance
    reserved: true // Linux
    maximumElasticWorkerCount: maxElasticWorkers
    zoneRedundant: zoneRedundant
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {}, '${controlIdentityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: functionSubnetId
    // checkov:skip=CKV_AZURE_222: inbound is denied by default and admitted only from the API Management subnet (siteConfig.ipSecurityRestrictions); a private endpoint would need an internal gateway tier (ADR 0013)
    // checkov:skip=CKV_AZURE_17: callers authenticate with Entra access tokens; client certificates would break API Management and health probes
    // checkov:skip=CKV_AZURE_212: Elastic Premium scales with minimumElasticInstanceCount (3 when zone redundant); numberOfWorkers does not apply
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      linuxFxVersion: 'PYTHON|3.11'
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      healthCheckPath: '/api/health'
      // Zone-redundant plans keep one warm instance per zone.
      minimumElasticInstanceCount: zoneRedundant ? 3 : 1
      functionAppScaleLimit: maxElasticWorkers
      // The scale controller cannot see the Durable Task Scheduler's backlog: the runtime reports it (ADR 0024).
      functionsRuntimeScaleMonitoringEnabled: true
      vnetRouteAllEnabled: true
      appSettings: appSettings
      // Inbound: API Management's subnet only. The deployment endpoint (scm) keeps its own
      // rules and accepts Entra-authenticated deployments only: basic publishing credentials are off below.
      ipSecurityRestrictionsDefaultAction: 'Deny'
      ipSecurityRestrictions: [
        { name: 'apim', action: 'Allow', priority: 100, vnetSubnetResourceId: apimSubnetId }
      ]
      scmIpSecurityRestrictionsUseMain: false
    }
  }
}

resource staging 'Microsoft.Web/sites/slots@2024-04-01' = {
  parent: site
  name: 'staging'
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {}, '${controlIdentityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: functionSubnetId
    // checkov:skip=CKV_AZURE_222: inbound is denied by default and admitted only from the API Management subnet (siteConfig.ipSecurityRestrictions); a private endpoint would need an internal gateway tier (ADR 0013)
    // checkov:skip=CKV_AZURE_17: callers authenticate with Entra access tokens; client certificates would break API Management and health probes
    // checkov:skip=CKV_AZURE_212: Elastic Premium scales with minimumElasticInstanceCount (3 when zone redundant); numberOfWorkers does not apply
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      linuxFxVersion: 'PYTHON|3.11'
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      healthCheckPath: '/api/health'
      // Zone-redundant plans keep one warm instance per zone.
      minimumElasticInstanceCount: zoneRedundant ? 3 : 1
      functionAppScaleLimit: maxElasticWorkers
      // The scale controller cannot see the Durable Task Scheduler's backlog: the runtime reports it (ADR 0024).
      functionsRuntimeScaleMonitoringEnabled: true
      vnetRouteAllEnabled: true
      appSettings: appSettings
      // Inbound: API Management's subnet only (the deploy workflow admits its runner for the smoke test). The deployment endpoint (scm) keeps its own
      // rules and accepts Entra-authenticated deployments only: basic publishing credentials are off below.
      ipSecurityRestrictionsDefaultAction: 'Deny'
      ipSecurityRestrictions: [
        { name: 'apim', action: 'Allow', priority: 100, vnetSubnetResourceId: apimSubnetId }
      ]
      scmIpSecurityRestrictionsUseMain: false
    }
  }
}

resource siteFtp 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: { allow: false }
}

resource siteScm 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: { allow: false }
}

resource stagingFtp 'Microsoft.Web/sites/slots/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: staging
  name: 'ftp'
  properties: { allow: false }
}

resource stagingScm 'Microsoft.Web/sites/slots/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: staging
  name: 'scm'
  properties: { allow: false }
}

resource planDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: plan
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    metrics: [{ category: 'AllMetrics', enabled: true }]
  }
}

resource siteDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: site
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
    metrics: [{ category: 'AllMetrics', enabled: true }]
  }
}

resource stagingDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: staging
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
    metrics: [{ category: 'AllMetrics', enabled: true }]
  }
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
output stagingHostName string = staging.properties.defaultHostName
