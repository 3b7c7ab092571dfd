# intent_ref: platform.estate
# The function app on an Elastic Premium plan with a `staging` slot for blue-green swaps. Every binding and
# client reaches its service with the runtime identity (the control identity is only the control plane's Postgres
# login, ADR 0018): the settings hold names and endpoints, never keys.

locals {
  # Every setting shared/config.py reads (tests/infra checks this against Settings.model_fields), plus the
  # runtime's identity-based connections. FUNCTIONS_EXTENSION_VERSION, FUNCTIONS_WORKER_RUNTIME and
  # APPLICATIONINSIGHTS_CONNECTION_STRING are set through their own arguments below. Local-only settings
  # (QP_BLOB_CONNECTION_STRING, QP_DATABASE_OWNER_URL) are intentionally absent.
  app_settings = {
    "AzureWebJobsFeatureFlags" = "EnableWorkerIndexing"
    # HTTP streams: the gateway takes a FastAPI Request and streams its answer (server-sent events, ADR 0031).
    "PYTHON_ENABLE_INIT_INDEXING" = "1"
    # No Azure Files content share (it needs an account key): the package runs from the deployment zip.
    "WEBSITE_RUN_FROM_PACKAGE" = "1"
    # The host's storage through the runtime identity. azurerm also writes __accountName itself
    # (storage_uses_managed_identity below) and files it under storage_account_name when it reads the site back:
    # the lifecycle blocks below keep that from showing as a change on every plan. __credential and __clientId are
    # only here: the provider writes __accountName alone, which means a system-assigned identity, and there is none.
    "AzureWebJobsStorage__accountName"            = var.storage_account_name
    "AzureWebJobsStorage__credential"             = "managedidentity"
    "AzureWebJobsStorage__clientId"               = var.identity_client_id
    "EventHubConnection__fullyQualifiedNamespace" = "${var.event_hub_namespace_name}.servicebus.windows.net"
    "EventHubConnection__credential"              = "managedidentity"
    "EventHubConnection__clientId"                = var.identity_client_id
    # DefaultAzureCredential in the app (runtime Postgres token, blob, Cosmos) picks the runtime identity from this;
    # with two identities attached, none is a default.
    "AZURE_CLIENT_ID"                           = var.identity_client_id
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" = "Authorization=AAD;ClientId=${var.identity_client_id}"
    "QP_ENVIRONMENT"                            = var.environment_type
    "QP_DATABASE_URL"                           = "host=${var.postgres_fqdn} port=5432 dbname=${var.postgres_database} user=${var.identity_name} sslmode=require"
    # The control plane connects as its own identity: the runtime login cannot become qp_platform (ADR 0018).
    "QP_DATABASE_CONTROL_URL"       = "host=${var.postgres_fqdn} port=5432 dbname=${var.postgres_database} user=${var.control_identity_name} sslmode=require"
    "QP_DATABASE_CONTROL_CLIENT_ID" = var.control_identity_client_id
    "QP_DATABASE_ENTRA_AUTH"        = "true"
    "QP_DATABASE_POOL_MAX"          = tostring(var.database_pool_max)
    "QP_DATABASE_POOL_TIMEOUT_S"    = "3"
    "QP_DATABASE_CONNECT_TIMEOUT_S" = "2"
    # Half the pool per tenant: one tenant's burst always leaves connections for the others.
    "QP_TENANT_MAX_CONCURRENT_REQUESTS" = tostring(max(1, floor(var.database_pool_max / 2)))
    "QP_BLOB_ACCOUNT_URL"               = var.blob_endpoint
    "QP_ARTIFACTS_CONTAINER"            = "artifacts"
    "QP_TASK_HUB"                       = var.task_hub_name
    # host.json's durableTask.storageProvider (azureManaged) names this setting: the scheduler endpoint and the
    # runtime identity, no key (ADR 0024). The task hub comes from hubName (QP_TASK_HUB).
    "DURABLE_TASK_SCHEDULER_CONNECTION" = "Endpoint=${var.durable_task_scheduler_endpoint};Authentication=ManagedIdentity;ClientID=${var.identity_client_id}"
    "QP_EVENTHUB_BACKEND"               = "azure"
    "QP_AUDIT_BACKEND"                  = "cosmos"
    "QP_COSMOS_ENDPOINT"                = var.cosmos_endpoint
    "QP_COSMOS_DATABASE"                = "quantum"
    "QP_COSMOS_AUDIT_CONTAINER"         = "audit"
    "QP_RATE_LIMIT_PER_MINUTE"          = "600"
    "QP_RATE_LIMIT_BURST"               = "100"
    "QP_MAX_BODY_BYTES"                 = "1048576"
    "QP_MAX_ORCHESTRATION_INPUT_BYTES"  = "1000000"
    "QP_REGISTRY_MAX_DEFINITION_BYTES"  = "262144"
    "QP_REGISTRY_MAX_STEPS"             = "200"
    "QP_REGISTRY_MAX_DEPTH"             = "32"
    "QP_PAYLOAD_INLINE_MAX_BYTES"       = "65536"
    "QP_TASK_TOKEN_TTL_S"               = "86400"
    # Resolved by App Service with key_vault_reference_identity_id (the runtime identity); never written here (ADR 0040).
    # Both named by variables, so that a rotation lives in the stack: one set by hand was undone by the next run.
    "QP_SEALING_KEY"                       = "@Microsoft.KeyVault(VaultName=${var.key_vault_name};SecretName=${var.sealing_key_secret_name})"
    "QP_SEALING_KEY_PREVIOUS"              = var.previous_sealing_key_secret_name == "" ? "" : "@Microsoft.KeyVault(VaultName=${var.key_vault_name};SecretName=${var.previous_sealing_key_secret_name})"
    "QP_DISPATCH_RESULT_WAIT_MS"           = "250"
    "QP_DEFAULT_MAX_CONCURRENT_EXECUTIONS" = "100"
    "QP_DEFAULT_MAX_WEBHOOK_SUBSCRIPTIONS" = "25"
    # Below the 4-minute idle timeout of the load balancers in front of the app and API Management (ADR 0031).
    "QP_EVENT_STREAM_KEEPALIVE_S" = "15"
    "QP_EVENT_STREAM_MAX_S"       = "220"
    "QP_EVENT_STREAMS_PER_TENANT" = "100"
    # Loopback and private addresses are the platform's own services here: no tenant step may reach them.
    "QP_ALLOW_PRIVATE_NETWORK_HOSTS" = "false"
    # Telemetry goes to Application Insights (its connection string is set above); no local file in Azure.
    "QP_TELEMETRY_FILE" = ""
    # A span per SQL statement costs more than half a busy instance's throughput: on only to diagnose.
    "QP_TELEMETRY_SQL_SPANS" = "false"
    # Multi-tenant Entra metadata: the issuer is a {tenantid} template checked against each token's tid.
    "QP_AUTH_METADATA_URL" = "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration"
    # v2 tokens only (ADR 0010), whose `aud` is always the API's client id: the app id URI would never match.
    "QP_AUTH_AUDIENCE" = var.api_client_id
    # The API is multi-tenant: a customer's administrators can assign its Platform.Admin role in their directory.
    "QP_OPERATOR_ENTRA_TENANT_ID"  = var.operator_entra_tenant_id
    "QP_AUTH_LEEWAY_S"             = "30"
    "QP_AUTH_MAX_TOKEN_LIFETIME_S" = "7200"
    "QP_AUTH_JWKS_COOLDOWN_S"      = "60"
  }
}

resource "azurerm_service_plan" "main" {
  #checkov:skip=CKV_AZURE_212:Elastic Premium keeps warm instances through elastic_instance_minimum on the site (3 when zone redundant); worker_count does not apply
  #checkov:skip=CKV_AZURE_225:zone redundancy is on for prod (zone_redundant); dev runs in one zone to keep its minimum at one instance
  name                         = var.plan_name
  resource_group_name          = var.resource_group_name
  location                     = var.location
  tags                         = var.tags
  os_type                      = "Linux"
  sku_name                     = "EP1"
  maximum_elastic_worker_count = var.max_elastic_workers
  zone_balancing_enabled       = var.zone_redundant
}

resource "azurerm_linux_function_app" "main" {
  #checkov:skip=CKV_AZURE_221:inbound is denied by default and admitted only from the API Management subnet (ip_restriction); a private endpoint would need an internal gateway tier (ADR 0013)
  #checkov:skip=CKV_AZURE_56:callers authenticate with Entra access tokens validated at API Management and again in the app
  name                                           = var.name
  resource_group_name                            = var.resource_group_name
  location                                       = var.location
  tags                                           = merge(var.tags, { "azd-service-name" = "api" })
  service_plan_id                                = azurerm_service_plan.main.id
  functions_extension_version                    = "~4"
  https_only                                     = true
  client_certificate_enabled                     = false
  public_network_access_enabled                  = true
  key_vault_reference_identity_id                = var.identity_id
  virtual_network_subnet_id                      = var.function_subnet_id
  ftp_publish_basic_authentication_enabled       = false
  webdeploy_publish_basic_authentication_enabled = false
  app_settings                                   = local.app_settings
  # Without these azurerm writes an AzureWebJobsStorage connection string from an empty account name and key, and
  # on EP1 an Azure Files content share (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING, WEBSITE_CONTENTSHARE) and
  # AzureWebJobsDashboard with it: the host cannot start. No content share (ADR 0013); the runtime identity reads
  # the account (AzureWebJobsStorage__credential and __clientId in app_settings).
  storage_account_name          = var.storage_account_name
  storage_uses_managed_identity = true
  content_share_force_disabled  = true
  builtin_logging_enabled       = false

  lifecycle {
    # Written by the provider from storage_account_name and never read back into app_settings (see the locals).
    ignore_changes = [app_settings["AzureWebJobsStorage__accountName"]]
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [var.identity_id, var.control_identity_id]
  }

  site_config {
    minimum_tls_version               = "1.2"
    scm_minimum_tls_version           = "1.2"
    ftps_state                        = "Disabled"
    http2_enabled                     = true
    health_check_path                 = "/api/health"
    health_check_eviction_time_in_min = 10
    elastic_instance_minimum          = var.zone_redundant ? 3 : 1
    app_scale_limit                   = var.max_elastic_workers
    # The scale controller cannot see the Durable Task Scheduler's backlog: the runtime reports it (ADR 0024).
    runtime_scale_monitoring_enabled       = true
    vnet_route_all_enabled                 = true
    application_insights_connection_string = var.app_insights_connection_string
    # Inbound: API Management's subnet only. The deployment endpoint (scm) keeps its own rules and accepts
    # Entra-authenticated deployments only: basic publishing credentials are off above.
    ip_restriction_default_action = "Deny"
    scm_use_main_ip_restriction   = false

    ip_restriction {
      name                      = "apim"
      action                    = "Allow"
      priority                  = 100
      virtual_network_subnet_id = var.apim_subnet_id
    }

    application_stack {
      python_version = "3.11"
    }
  }
}

resource "azurerm_linux_function_app_slot" "staging" {
  #checkov:skip=CKV_AZURE_221:inbound is denied by default and admitted only from the API Management subnet; the deploy workflow admits its runner for the smoke test
  #checkov:skip=CKV_AZURE_56:callers authenticate with Entra access tokens validated at API Management and again in the app
  name                                           = "staging"
  function_app_id                                = azurerm_linux_function_app.main.id
  tags                                           = var.tags
  functions_extension_version                    = "~4"
  https_only                                     = true
  client_certificate_enabled                     = false
  public_network_access_enabled                  = true
  key_vault_reference_identity_id                = var.identity_id
  virtual_network_subnet_id                      = var.function_subnet_id
  ftp_publish_basic_authentication_enabled       = false
  webdeploy_publish_basic_authentication_enabled = false
  app_settings                                   = local.app_settings
  # Without these azurerm writes an AzureWebJobsStorage connection string from an empty account name and key, and
  # on EP1 an Azure Files content share (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING, WEBSITE_CONTENTSHARE) and
  # AzureWebJobsDashboard with it: the host cannot start. No content share (ADR 0013); the runtime identity reads
  # the account (AzureWebJobsStorage__credential and __clientId in app_settings).
  storage_account_name          = var.storage_account_name
  storage_uses_managed_identity = true
  content_share_force_disabled  = true
  builtin_logging_enabled       = false

  lifecycle {
    # Written by the provider from storage_account_name and never read back into app_settings (see the locals).
    ignore_changes = [app_settings["AzureWebJobsStorage__accountName"]]
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [var.identity_id, var.control_identity_id]
  }

  site_config {
    minimum_tls_version               = "1.2"
    scm_minimum_tls_version           = "1.2"
    ftps_state                        = "Disabled"
    http2_enabled                     = true
    health_check_path                 = "/api/health"
    health_check_eviction_time_in_min = 10
    elastic_instance_minimum          = var.zone_redundant ? 3 : 1
    app_scale_limit                   = var.max_elastic_workers
    # The scale controller cannot see the Durable Task Scheduler's backlog: the runtime reports it (ADR 0024).
    runtime_scale_monitoring_enabled       = true
    vnet_route_all_enabled                 = true
    application_insights_connection_string = var.app_insights_connection_string
    ip_restriction_default_action          = "Deny"
    scm_use_main_ip_restriction            = false

    ip_restriction {
      name                      = "apim"
      action                    = "Allow"
      priority                  = 100
      virtual_network_subnet_id = var.apim_subnet_id
    }

    application_stack {
      python_version = "3.11"
    }
  }
}

resource "azurerm_monitor_diagnostic_setting" "plan" {
  name                       = "diag-log"
  target_resource_id         = azurerm_service_plan.main.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  metric {
    category = "AllMetrics"
  }
}

resource "azurerm_monitor_diagnostic_setting" "site" {
  name                       = "diag-log"
  target_resource_id         = azurerm_linux_function_app.main.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category_group = "allLogs"
  }

  metric {
    category = "AllMetrics"
  }
}

resource "azurerm_monitor_diagnostic_setting" "staging" {
  name                       = "diag-log"
  target_resource_id         = azurerm_linux_function_app_slot.staging.id
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category_group = "allLogs"
  }

  metric {
    category = "AllMetrics"
  }
}
