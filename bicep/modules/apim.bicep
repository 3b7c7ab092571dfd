// intent_ref: platform.estate
// API Management in front of the function app: the API imported from docs/openapi.json, the shared policy
// (bicep/policies/api-policy.xml) and the named values it reads.

@description('Name of the API Management service.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Publisher e-mail.')
param publisherEmail string

@description('Publisher name.')
param publisherName string

@description('Entra tenant of the API app registration.')
param entraTenantId string

@minLength(36)
@maxLength(36)
@description('Application (client) id of the API registration: the `aud` of its v2 tokens, checked at the edge.')
param apiClientId string

@description('Default host name of the function app (production slot).')
param functionAppHostName string

@minValue(1)
@description('Calls per minute per Entra tenant.')
param rateLimitPerMinute int

@description('Subnet for the outbound VNet integration (StandardV2).')
param subnetId string

@description('Log Analytics workspace receiving diagnostics.')
param logAnalyticsWorkspaceId string

// No daily quota here: quota-by-key does not exist on the v2 tiers (StandardV2 below), and the app enforces each
// tenant's quotas itself, answering 429 (ADR 0013).
var namedValues = {
  // The v2 token's `aud` is the client id; the gateway's own token for the backend is asked for the same resource.
  'api-audience': apiClientId
  'backend-audience': apiClientId
  'openid-config-url': '${environment().authentication.loginEndpoint}organizations/v2.0/.well-known/openid-configuration'
  'rate-limit-calls': string(rateLimitPerMinute)
  'entra-tenant-id': entraTenantId
}

resource service 'Microsoft.ApiManagement/service@2024-05-01' = {
  name: name
  location: location
  tags: tags
  sku: { name: 'StandardV2', capacity: 1 }
  identity: { type: 'SystemAssigned' }
  properties: {
    // checkov:skip=CKV_AZURE_174: the gateway is the platform's public entry point; it admits only Entra-authenticated calls (api-policy.xml)
    publisherEmail: publisherEmail
    publisherName: publisherName
    // StandardV2 VNet integration is outbound only: the gateway reaches the function app from snet-apim.
    virtualNetworkType: 'External'
    virtualNetworkConfiguration: { subnetResourceId: subnetId }
    customProperties: {
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Protocols.Tls10': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Protocols.Tls11': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Backend.Protocols.Tls10': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Backend.Protocols.Tls11': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Backend.Protocols.Ssl30': 'false'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Protocols.Ssl30': 'false'
    }
  }
}

resource values 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = [for item in items(namedValues): {
  parent: service
  name: item.key
  properties: {
    displayName: item.key
    value: item.value
    secret: false
  }
}]

resource backend 'Microsoft.ApiManagement/service/backends@2024-05-01' = {
  parent: service
  name: 'function-app'
  properties: {
    protocol: 'http'
    url: 'https://${functionAppHostName}'
    tls: { validateCertificateChain: true, validateCertificateName: true }
  }
}

resource api 'Microsoft.ApiManagement/service/apis@2024-05-01' = {
  parent: service
  name: 'quantum-platform'
  properties: {
    displayName: 'Quantum Platform API'
    path: ''
    protocols: ['https']
    serviceUrl: 'https://${functionAppHostName}'
    // Tenants authenticate with Entra tokens; subscription keys would be a second, shared secret.
    subscriptionRequired: false
    format: 'openapi+json'
    // loadJsonContent allows 1 MiB (loadTextContent stops at 128 KiB); the API document is about 300 KiB.
    value: string(loadJsonContent('../../docs/openapi.json'))
  }
}

resource apiPolicy 'Microsoft.ApiManagement/service/apis/policies@2024-05-01' = {
  parent: api
  name: 'policy'
  properties: {
    format: 'rawxml'
    value: loadTextContent('../policies/api-policy.xml')
  }
  dependsOn: [values, backend]
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'diag-log'
  scope: service
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
    metrics: [{ category: 'AllMetrics', enabled: true }]
  }
}

output id string = service.id
output principalId string = service.identity.principalId
output gatewayUrl string = service.properties.gatewayUrl
