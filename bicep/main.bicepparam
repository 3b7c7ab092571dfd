// intent_ref: platform.estate
// Parameters for `azd up` / `az deployment sub create`: values come from the azd environment (azd env set ...)
// so nothing here is environment-specific and nothing here is a secret.
using './main.bicep'

param environmentName = readEnvironmentVariable('AZURE_ENV_NAME', 'dev')
param environmentType = readEnvironmentVariable('QP_ENVIRONMENT_TYPE', 'dev')
param location = readEnvironmentVariable('AZURE_LOCATION', 'westeurope')
// No default on purpose: the API registration's client id ($APP_ID, docs/runbooks/tenant-onboarding.md) is the
// `aud` of its v2 tokens, and a guessed value answers every call 401. Unset, the parameter file does not build.
param apiClientId = readEnvironmentVariable('QP_API_CLIENT_ID')
param postgresAdminObjectId = readEnvironmentVariable('QP_POSTGRES_ADMIN_OBJECT_ID', '00000000-0000-0000-0000-000000000000')
param postgresAdminPrincipalName = readEnvironmentVariable('QP_POSTGRES_ADMIN_NAME', 'quantum-platform-operators')
param postgresAdminPrincipalType = 'Group'
param publisherEmail = readEnvironmentVariable('QP_PUBLISHER_EMAIL', 'platform-team@example.com')
param publisherName = 'Quantum Platform'
param alertEmail = readEnvironmentVariable('QP_ALERT_EMAIL', 'platform-team@example.com')
param eventHubPartitionCount = 4
param eventHubRetentionDays = 1
