# intent_ref: platform.estate
# The action group and the alerts of the platform (bicep/monitoring/alerts.json, shared with bicep/):
# 5xx rate, p95 latency over 200 ms, failed executions, rejected intent requests (telemetry lines of
# shared/telemetry.py).

locals {
  alerts = jsondecode(file("${path.module}/../../../bicep/monitoring/alerts.json"))
}

resource "azurerm_monitor_action_group" "main" {
  name                = var.action_group_name
  resource_group_name = var.resource_group_name
  short_name          = "quantum"
  tags                = var.tags

  email_receiver {
    name                    = "operators"
    email_address           = var.alert_email
    use_common_alert_schema = true
  }
}

resource "azurerm_monitor_scheduled_query_rules_alert_v2" "main" {
  for_each                = local.alerts
  name                    = "${var.alert_prefix}-${each.key}"
  display_name            = "${var.alert_prefix}-${each.key}"
  resource_group_name     = var.resource_group_name
  location                = var.location
  tags                    = var.tags
  description             = each.value.description
  severity                = each.value.severity
  enabled                 = true
  scopes                  = [var.app_insights_id]
  evaluation_frequency    = "PT5M"
  window_duration         = "PT5M"
  auto_mitigation_enabled = true

  criteria {
    query                   = each.value.query
    time_aggregation_method = "Maximum"
    metric_measure_column   = each.value.measure
    operator                = each.value.operator
    threshold               = each.value.threshold

    # An alert whose query keeps a column per tenant fires once per tenant and names it (alerts.json).
    dynamic "dimension" {
      for_each = try(each.value.dimensions, [])
      content {
        name     = dimension.value.name
        operator = dimension.value.operator
        values   = dimension.value.values
      }
    }

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.main.id]
  }
}
