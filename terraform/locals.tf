# intent_ref: platform.estate
locals {
  # The one naming table, read from the same file as bicep/main.bicep.
  abbrs = jsondecode(file("${path.module}/../bicep/abbreviations.json"))
  tags  = { "azd-env-name" = var.environment_name, application = "quantum-platform", environment = var.environment_type }

  # The same map as `names` in bicep/main.bicep; tests/infra compares the two.
  names = {
    resourceGroup        = "${local.abbrs.resourcesResourceGroups}${var.environment_name}"
    identity             = "${local.abbrs.managedIdentityUserAssignedIdentities}${var.environment_name}-${var.resource_token}"
    controlIdentity      = "${local.abbrs.managedIdentityUserAssignedIdentities}${var.environment_name}-${var.resource_token}-control"
    logAnalytics         = "${local.abbrs.operationalInsightsWorkspaces}${var.environment_name}-${var.resource_token}"
    appInsights          = "${local.abbrs.insightsComponents}${var.environment_name}-${var.resource_token}"
    storage              = "${local.abbrs.storageStorageAccounts}${var.resource_token}"
    eventHubNamespace    = "${local.abbrs.eventHubNamespaces}${var.environment_name}-${var.resource_token}"
    postgres             = "${local.abbrs.dBforPostgreSQLServers}${var.environment_name}-${var.resource_token}"
    cosmos               = "${local.abbrs.documentDBDatabaseAccounts}${var.environment_name}-${var.resource_token}"
    plan                 = "${local.abbrs.webServerFarms}${var.environment_name}-${var.resource_token}"
    functionApp          = "${local.abbrs.webSitesFunctions}${var.environment_name}-${var.resource_token}"
    apim                 = "${local.abbrs.apiManagementService}${var.environment_name}-${var.resource_token}"
    vnet                 = "${local.abbrs.networkVirtualNetworks}${var.environment_name}-${var.resource_token}"
    nsg                  = "${local.abbrs.networkNetworkSecurityGroups}${var.environment_name}-${var.resource_token}"
    actionGroup          = "${local.abbrs.insightsActionGroups}${var.environment_name}-${var.resource_token}"
    alertPrefix          = "${local.abbrs.insightsAlerts}${var.environment_name}-${var.resource_token}"
    durableTaskScheduler = "${local.abbrs.durableTaskSchedulers}${var.environment_name}-${var.resource_token}"
    # At most 24 characters: the token alone (13) after the prefix.
    keyVault = "${local.abbrs.keyVaultVaults}${var.resource_token}"
  }

  # The hub names are fixed by the code (DESIGN.md section 5); one consumer group per consuming function, and only
  # those: nothing in the app reads platform-events (webhooks are sent from the outbox, ADR 0030), so it has none.
  event_hub_names = ["intent-requests", "module-work", "platform-events"]
  event_hub_consumer_groups = [
    { hub = "intent-requests", group = "intake" },
    { hub = "module-work", group = "module-worker" },
  ]

  # Hyphens are dropped: environment names carry them (qp-dev), the task hub takes letters and digits only.
  task_hub_name = coalesce(var.task_hub_name, "Quantum${replace(var.environment_name, "-", "")}")
  is_prod       = var.environment_type == "prod"
}
