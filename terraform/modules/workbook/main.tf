# intent_ref: platform.estate
# The operations workbook (bicep/monitoring/workbook.json, shared with bicep/): executions by tenant and status,
# step durations, failures and top errors.

resource "azurerm_application_insights_workbook" "main" {
  # A workbook's name must be a GUID; a deterministic one keeps re-applies idempotent.
  name                = uuidv5("url", "https://quantum-platform/${var.resource_group_name}/operations-workbook")
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
  display_name        = var.display_name
  category            = "workbook"
  source_id           = lower(var.app_insights_id)
  data_json           = jsonencode(jsondecode(file("${path.module}/../../../bicep/monitoring/workbook.json")))
}
