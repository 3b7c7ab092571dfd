# intent_ref: platform.estate
"""Bicep and Terraform describe the same estate: module split, resource types, names, hubs, outputs, variables."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.infra.conftest import BICEP, BicepFile, TerraformModule

# Each Bicep resource type and the azurerm type that declares it; None where Terraform folds it into an
# argument or nested block of its parent (so it has no resource of its own).
BICEP_TO_AZURERM: dict[str, str | None] = {
    "Microsoft.Resources/resourceGroups": "azurerm_resource_group",
    "Microsoft.Network/networkSecurityGroups": "azurerm_network_security_group",
    "Microsoft.Network/virtualNetworks": "azurerm_virtual_network",
    "Microsoft.Network/privateDnsZones": "azurerm_private_dns_zone",
    "Microsoft.Network/privateDnsZones/virtualNetworkLinks": "azurerm_private_dns_zone_virtual_network_link",
    "Microsoft.Network/privateEndpoints": "azurerm_private_endpoint",
    "Microsoft.Network/privateEndpoints/privateDnsZoneGroups": None,  # private_dns_zone_group block
    "Microsoft.Insights/diagnosticSettings": "azurerm_monitor_diagnostic_setting",
    "Microsoft.ManagedIdentity/userAssignedIdentities": "azurerm_user_assigned_identity",
    "Microsoft.OperationalInsights/workspaces": "azurerm_log_analytics_workspace",
    "Microsoft.Insights/components": "azurerm_application_insights",
    "Microsoft.Storage/storageAccounts": "azurerm_storage_account",
    "Microsoft.Storage/storageAccounts/blobServices": None,  # blob_properties block
    "Microsoft.Storage/storageAccounts/queueServices": None,  # always present on a StorageV2 account
    "Microsoft.Storage/storageAccounts/tableServices": None,  # always present on a StorageV2 account
    "Microsoft.Storage/storageAccounts/blobServices/containers": "azurerm_storage_container",
    "Microsoft.EventHub/namespaces": "azurerm_eventhub_namespace",
    "Microsoft.EventHub/namespaces/eventhubs": "azurerm_eventhub",
    "Microsoft.EventHub/namespaces/eventhubs/consumergroups": "azurerm_eventhub_consumer_group",
    "Microsoft.DBforPostgreSQL/flexibleServers": "azurerm_postgresql_flexible_server",
    "Microsoft.DBforPostgreSQL/flexibleServers/administrators": (
        "azurerm_postgresql_flexible_server_active_directory_administrator"
    ),
    "Microsoft.DBforPostgreSQL/flexibleServers/databases": "azurerm_postgresql_flexible_server_database",
    "Microsoft.DocumentDB/databaseAccounts": "azurerm_cosmosdb_account",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases": "azurerm_cosmosdb_sql_database",
    "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers": "azurerm_cosmosdb_sql_container",
    "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments": "azurerm_cosmosdb_sql_role_assignment",
    "Microsoft.Web/serverfarms": "azurerm_service_plan",
    "Microsoft.Web/sites": "azurerm_linux_function_app",
    "Microsoft.Web/sites/slots": "azurerm_linux_function_app_slot",
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies": None,  # *_basic_authentication_enabled
    "Microsoft.Web/sites/slots/basicPublishingCredentialsPolicies": None,
    "Microsoft.ApiManagement/service": "azurerm_api_management",
    "Microsoft.ApiManagement/service/namedValues": "azurerm_api_management_named_value",
    "Microsoft.ApiManagement/service/backends": "azurerm_api_management_backend",
    "Microsoft.ApiManagement/service/apis": "azurerm_api_management_api",
    "Microsoft.ApiManagement/service/apis/policies": "azurerm_api_management_api_policy",
    "Microsoft.Authorization/roleAssignments": "azurerm_role_assignment",
    "Microsoft.Insights/actionGroups": "azurerm_monitor_action_group",
    "Microsoft.Insights/scheduledQueryRules": "azurerm_monitor_scheduled_query_rules_alert_v2",
    "Microsoft.Insights/workbooks": "azurerm_application_insights_workbook",
    "Microsoft.KeyVault/vaults": "azurerm_key_vault",
}
# Bicep types that azurerm has no resource type for: Terraform declares them with the azapi provider, as the same ARM
# resources (ADR 0024).
AZAPI_IN_TERRAFORM = {"Microsoft.DurableTask/schedulers", "Microsoft.DurableTask/schedulers/taskHubs"}

BUILT_IN_ROLE_IDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Azure Event Hubs Data Sender": "2b629674-e913-4c01-ae53-ef4638d8f975",
    "Azure Event Hubs Data Receiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Durable Task Data Contributor": "0ad04412-c4d5-4796-b79c-f76d14c8d402",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
}
# azurerm resources that Bicep declares inline in their parent (subnets and their NSG live in virtualNetworks).
AZURERM_INLINE_IN_BICEP = {"azurerm_subnet", "azurerm_subnet_network_security_group_association"}


def _bicep_types(files: list[BicepFile]) -> set[str]:
    return {resource["type"] for file in files for resource in file.resources.values()}


def _mapped(bicep_types: set[str]) -> set[str]:
    unknown = bicep_types - BICEP_TO_AZURERM.keys() - AZAPI_IN_TERRAFORM
    assert not unknown, f"add these Bicep types to BICEP_TO_AZURERM: {sorted(unknown)}"
    mapped = {BICEP_TO_AZURERM.get(t) for t in bicep_types - AZAPI_IN_TERRAFORM}
    return {t for t in mapped if t is not None} | ({"azapi_resource"} if bicep_types & AZAPI_IN_TERRAFORM else set())


def _tf_types(modules: list[TerraformModule]) -> set[str]:
    return {t for module in modules for t in module.resources} - AZURERM_INLINE_IN_BICEP


def test_the_module_split_is_the_same(bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]):
    assert set(bicep_modules) == set(tf_modules)
    assert len(bicep_modules) >= 10


def test_each_module_declares_the_same_resource_types(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    for name, bicep in bicep_modules.items():
        assert _mapped(_bicep_types([bicep])) == _tf_types([tf_modules[name]]), f"module {name} differs"


def test_the_whole_estate_declares_the_same_resource_types(
    bicep_main: BicepFile,
    bicep_modules: dict[str, BicepFile],
    tf_root: TerraformModule,
    tf_modules: dict[str, TerraformModule],
):
    bicep = _mapped(_bicep_types([bicep_main, *bicep_modules.values()]))
    terraform = _tf_types([tf_root, *tf_modules.values()])
    assert bicep == terraform
    expected = {
        "azurerm_linux_function_app_slot",
        "azurerm_api_management_api_policy",
        "azurerm_eventhub",
        "azurerm_cosmosdb_sql_container",
        "azurerm_postgresql_flexible_server_database",
        "azurerm_monitor_scheduled_query_rules_alert_v2",
        "azurerm_application_insights_workbook",
    }
    assert expected <= bicep


def _normalise_name(template: str) -> str:
    """`${abbrs.x}${environmentName}-${resourceToken}` and its Terraform twin both become `<abbr:x><env>-<token>`."""
    text = re.sub(r"\$\{(?:local\.)?abbrs\.(\w+)\}", r"<abbr:\1>", template)
    text = re.sub(r"\$\{(?:environmentName|var\.environment_name)\}", "<env>", text)
    text = re.sub(r"\$\{(?:resourceToken|var\.resource_token)\}", "<token>", text)
    assert "${" not in text, f"unexpected expression in a name: {template}"
    return text


def test_resource_names_are_the_same_and_come_from_the_shared_abbreviations(
    bicep_main: BicepFile, tf_root: TerraformModule
):
    abbreviations = json.loads((BICEP / "abbreviations.json").read_text(encoding="utf-8"))
    bicep_names = {key: _normalise_name(value) for key, value in bicep_main.variables["names"].items()}
    tf_names = {key: _normalise_name(value) for key, value in tf_root.locals["names"].items()}
    assert bicep_names == tf_names
    for name in bicep_names.values():
        for abbr in re.findall(r"<abbr:(\w+)>", name):
            assert abbr in abbreviations, f"{abbr} is not in abbreviations.json"
    assert "abbreviations.json" in tf_root.locals["abbrs"]
    assert "../bicep/abbreviations.json" in tf_root.locals["abbrs"]


def test_event_hubs_and_consumer_groups_are_the_same(bicep_main: BicepFile, tf_root: TerraformModule):
    assert bicep_main.variables["eventHubNames"] == tf_root.locals["event_hub_names"]
    assert {"intent-requests", "module-work", "platform-events"} == set(bicep_main.variables["eventHubNames"])
    bicep_groups = sorted((g["hub"], g["group"]) for g in bicep_main.variables["eventHubConsumerGroups"])
    tf_groups = sorted((g["hub"], g["group"]) for g in tf_root.locals["event_hub_consumer_groups"])
    assert bicep_groups == tf_groups
    # A group per consuming function, not per hub: nothing in the app reads platform-events, so it has none
    # (test_event_hub_access.py ties the groups to the code's triggers).
    assert {hub for hub, _ in bicep_groups} <= set(bicep_main.variables["eventHubNames"])


def _bicep_param_default(file: BicepFile, name: str) -> Any:
    return file.parsed["parameters"][name]["default"]


def test_fixed_child_names_are_the_same(bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]):
    pairs = [
        ("storage", "artifactsContainerName", "artifacts_container_name", "artifacts"),
        ("postgres", "databaseName", "database_name", "quantum"),
        ("cosmos", "databaseName", "database_name", "quantum"),
        ("cosmos", "auditContainerName", "audit_container_name", "audit"),
    ]
    for module, bicep_param, tf_variable, expected in pairs:
        assert _bicep_param_default(bicep_modules[module], bicep_param) == expected
        assert tf_modules[module].variables[tf_variable]["default"] == expected
    staging = bicep_modules["functionapp"].resources["staging"]["config"]["name"]
    assert staging == tf_modules["functionapp"].of_type("azurerm_linux_function_app_slot")["staging"]["name"]
    assert (
        bicep_modules["apim"].resources["api"]["config"]["name"]
        == (tf_modules["apim"].of_type("azurerm_api_management_api")["main"]["name"])
    )


def test_outputs_are_the_same(bicep_main: BicepFile, tf_root: TerraformModule):
    assert set(bicep_main.parsed["outputs"]) == set(tf_root.outputs)
    assert {"FUNCTION_APP_NAME", "API_GATEWAY_URL", "AZURE_RESOURCE_GROUP"} <= set(tf_root.outputs)


def test_every_root_variable_is_typed_described_and_validated(tf_root: TerraformModule):
    assert tf_root.variables
    for name, variable in tf_root.variables.items():
        assert "type" in variable, f"{name} has no type"
        assert variable.get("description"), f"{name} has no description"
        assert variable.get("validation"), f"{name} has no validation"


def test_every_module_variable_is_typed_and_described(tf_modules: dict[str, TerraformModule]):
    for module_name, module in tf_modules.items():
        for name, variable in module.variables.items():
            assert "type" in variable and variable.get("description"), f"{module_name}.{name}"


def test_every_bicep_parameter_is_described(bicep_main: BicepFile, bicep_modules: dict[str, BicepFile]):
    for file in [bicep_main, *bicep_modules.values()]:
        for name, parameter in file.parsed["parameters"].items():
            kinds = {decorator["type"] for decorator in parameter["decorators"]}
            assert "description" in kinds, f"{file.path.name}: {name}"


def test_main_bicep_is_a_subscription_deployment(bicep_main: BicepFile):
    assert bicep_main.parsed["globals"]["scope"]["value"] == "subscription"
    assert set(bicep_main.parsed["modules"]) >= {
        "network",
        "monitoring",
        "identity",
        "storage",
        "postgres",
        "cosmos",
        "functionApp",
        "apim",
        "rbac",
        "alerts",
        "workbook",
    }


def test_role_assignments_live_in_one_module(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    role_types = {"Microsoft.Authorization/roleAssignments", "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments"}
    for name, file in bicep_modules.items():
        has_roles = any(resource["type"] in role_types for resource in file.resources.values())
        assert has_roles == (name == "rbac"), name
    for name, module in tf_modules.items():
        has_roles = bool(
            module.of_type("azurerm_role_assignment") or module.of_type("azurerm_cosmosdb_sql_role_assignment")
        )
        assert has_roles == (name == "rbac"), name


def test_rbac_grants_exactly_the_least_privilege_roles(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    expected = {
        "Storage Blob Data Owner",
        "Storage Queue Data Contributor",
        "Storage Table Data Contributor",
        "Azure Event Hubs Data Sender",
        "Azure Event Hubs Data Receiver",
        "Monitoring Metrics Publisher",
        "Durable Task Data Contributor",
        "Key Vault Secrets User",
    }
    assignments = tf_modules["rbac"].locals["assignments"]
    assert {item["role"] for item in assignments.values()} == expected
    role_ids = set(bicep_modules["rbac"].variables["roles"].values())
    assert role_ids == set(BUILT_IN_ROLE_IDS.values())
    assert {BUILT_IN_ROLE_IDS[role] for role in expected} == role_ids
