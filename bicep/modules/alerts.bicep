// intent_ref: platform.estate
// The action group and the alerts of the platform (bicep/monitoring/alerts.json, shared with terraform/):
// 5xx rate, p95 latency over 200 ms, failed executions, rejected intent requests (telemetry lines of
// shared/telemetry.py).

@description('Name of the action group.')
param actionGroupName string

@description('Name prefix of the alert rules.')
param alertPrefix string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('E-mail address notified by the action group.')
param alertEmail string

@description('Application Insights component the queries run against.')
param appInsightsId string

var alerts = loadJsonContent('../monitoring/alerts.json')

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'quantum'
    enabled: true
    emailReceivers: [{ name: 'operators', emailAddress: alertEmail, useCommonAlertSchema: true }]
  }
}

resource rules 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = [for alert in items(alerts): {
  name: '${alertPrefix}-${alert.key}'
  location: location
  tags: tags
  properties: {
    displayName: '${alertPrefix}-${alert.key}'
    description: alert.value.description
    severity: alert.value.severity
    enabled: true
    scopes: [appInsightsId]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: alert.value.query
          timeAggregation: 'Maximum'
          metricMeasureColumn: alert.value.measure
          operator: alert.value.operator
          threshold: alert.value.threshold
          // An alert whose query keeps a column per tenant fires once per tenant and names it (alerts.json).
          dimensions: contains(alert.value, 'dimensions') ? alert.value.dimensions : []
          failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
        }
      ]
    }
    actions: { actionGroups: [actionGroup.id] }
  }
}]

output actionGroupId string = actionGroup.id
