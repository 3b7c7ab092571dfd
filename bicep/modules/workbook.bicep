// intent_ref: platform.estate
// The operations workbook (bicep/monitoring/workbook.json, shared with terraform/): executions by tenant and
// status, step durations, failures and top errors.

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Application Insights component the workbook reads.')
param appInsightsId string

@description('Display name of the workbook.')
param displayName string = 'Quantum Platform operations'

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; a deterministic one keeps redeployments idempotent.
  name: guid(resourceGroup().id, 'quantum-operations-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: appInsightsId
    serializedData: string(loadJsonContent('../monitoring/workbook.json'))
  }
}

output id string = workbook.id
