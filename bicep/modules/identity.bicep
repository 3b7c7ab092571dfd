// intent_ref: platform.estate
// A user-assigned identity of the function app. The runtime identity is the principal every data-plane grant
// names; the control identity (a second instance) is only the control plane's Postgres login (ADR 0018).

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
