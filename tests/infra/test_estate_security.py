# intent_ref: platform.estate
"""Security rules over both stacks: TLS 1.2, no keys, private paths closed to the internet, diagnostics everywhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.infra.conftest import BICEP, TERRAFORM, BicepFile, TerraformModule

# Resource types that support diagnostic settings and must have one (Bicep type -> azurerm type).
DIAGNOSED = {
    "Microsoft.OperationalInsights/workspaces": "azurerm_log_analytics_workspace",
    "Microsoft.Insights/components": "azurerm_application_insights",
    "Microsoft.Network/virtualNetworks": "azurerm_virtual_network",
    "Microsoft.Network/networkSecurityGroups": "azurerm_network_security_group",
    "Microsoft.Storage/storageAccounts": "azurerm_storage_account",
    "Microsoft.Storage/storageAccounts/blobServices": None,
    "Microsoft.Storage/storageAccounts/queueServices": None,
    "Microsoft.Storage/storageAccounts/tableServices": None,
    "Microsoft.EventHub/namespaces": "azurerm_eventhub_namespace",
    "Microsoft.DBforPostgreSQL/flexibleServers": "azurerm_postgresql_flexible_server",
    "Microsoft.DocumentDB/databaseAccounts": "azurerm_cosmosdb_account",
    "Microsoft.Web/serverfarms": "azurerm_service_plan",
    "Microsoft.Web/sites": "azurerm_linux_function_app",
    "Microsoft.Web/sites/slots": "azurerm_linux_function_app_slot",
    "Microsoft.ApiManagement/service": "azurerm_api_management",
    "Microsoft.KeyVault/vaults": "azurerm_key_vault",
}


def _all_bicep(bicep_modules: dict[str, BicepFile]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (module, name, resource) for module, file in bicep_modules.items() for name, resource in file.resources.items()
    ]


def _config(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource body; a `[for ...]` loop nests it one level deeper."""
    config = resource["config"]
    return config["config"] if "loop_type" in config else config


def _props(resource: dict[str, Any]) -> dict[str, Any]:
    return _config(resource).get("properties", {})


def _bicep_of_type(bicep_modules: dict[str, BicepFile], resource_type: str) -> list[dict[str, Any]]:
    found = [resource for _, _, resource in _all_bicep(bicep_modules) if resource["type"] == resource_type]
    assert found, f"no {resource_type} in bicep/"
    return found


def _tf_of_type(tf_modules: dict[str, TerraformModule], resource_type: str) -> list[dict[str, Any]]:
    found = [body for module in tf_modules.values() for body in module.of_type(resource_type).values()]
    assert found, f"no {resource_type} in terraform/"
    return found


def test_tls_1_2_minimum_everywhere(bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]):
    for account in _bicep_of_type(bicep_modules, "Microsoft.Storage/storageAccounts"):
        assert _props(account)["minimumTlsVersion"] == "TLS1_2"
        assert _props(account)["supportsHttpsTrafficOnly"] is True
    for namespace in _bicep_of_type(bicep_modules, "Microsoft.EventHub/namespaces"):
        assert _props(namespace)["minimumTlsVersion"] == "1.2"
    for account in _bicep_of_type(bicep_modules, "Microsoft.DocumentDB/databaseAccounts"):
        assert _props(account)["minimalTlsVersion"] == "Tls12"
    for kind in ("Microsoft.Web/sites", "Microsoft.Web/sites/slots"):
        for site in _bicep_of_type(bicep_modules, kind):
            assert _props(site)["httpsOnly"] is True
            assert _props(site)["siteConfig"]["minTlsVersion"] == "1.2"
            assert _props(site)["siteConfig"]["ftpsState"] == "Disabled"
    for service in _bicep_of_type(bicep_modules, "Microsoft.ApiManagement/service"):
        protocols = _props(service)["customProperties"]
        assert all(value == "false" for key, value in protocols.items() if re.search(r"(Tls1[01]|Ssl30)$", key))

    for account in _tf_of_type(tf_modules, "azurerm_storage_account"):
        assert account["min_tls_version"] == "TLS1_2"
    for namespace in _tf_of_type(tf_modules, "azurerm_eventhub_namespace"):
        assert namespace["minimum_tls_version"] == "1.2"
    for account in _tf_of_type(tf_modules, "azurerm_cosmosdb_account"):
        assert account["minimal_tls_version"] == "Tls12"
    for kind in ("azurerm_linux_function_app", "azurerm_linux_function_app_slot"):
        for site in _tf_of_type(tf_modules, kind):
            assert site["https_only"] is True
            assert site["site_config"][0]["minimum_tls_version"] == "1.2"
            assert site["site_config"][0]["ftps_state"] == "Disabled"
    for service in _tf_of_type(tf_modules, "azurerm_api_management"):
        assert all(value is False for key, value in service["security"][0].items() if key != "__is_block__")


def test_local_auth_and_shared_keys_are_disabled(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    for account in _bicep_of_type(bicep_modules, "Microsoft.Storage/storageAccounts"):
        assert _props(account)["allowSharedKeyAccess"] is False
        assert _props(account)["allowBlobPublicAccess"] is False
    for namespace in _bicep_of_type(bicep_modules, "Microsoft.EventHub/namespaces"):
        assert _props(namespace)["disableLocalAuth"] is True
    for account in _bicep_of_type(bicep_modules, "Microsoft.DocumentDB/databaseAccounts"):
        assert _props(account)["disableLocalAuth"] is True
        assert _props(account)["disableKeyBasedMetadataWriteAccess"] is True
    for workspace in _bicep_of_type(bicep_modules, "Microsoft.OperationalInsights/workspaces"):
        assert _props(workspace)["features"]["disableLocalAuth"] is True
    for component in _bicep_of_type(bicep_modules, "Microsoft.Insights/components"):
        assert _props(component)["DisableLocalAuth"] is True
    for server in _bicep_of_type(bicep_modules, "Microsoft.DBforPostgreSQL/flexibleServers"):
        assert _props(server)["authConfig"] == {
            **_props(server)["authConfig"],
            "activeDirectoryAuth": "Enabled",
            "passwordAuth": "Disabled",
        }
        assert "administratorLogin" not in _props(server)
    for policy in _bicep_of_type(bicep_modules, "Microsoft.Web/sites/basicPublishingCredentialsPolicies"):
        assert _props(policy)["allow"] is False

    for account in _tf_of_type(tf_modules, "azurerm_storage_account"):
        assert account["shared_access_key_enabled"] is False
        assert account["allow_nested_items_to_be_public"] is False
    for namespace in _tf_of_type(tf_modules, "azurerm_eventhub_namespace"):
        assert namespace["local_authentication_enabled"] is False
    for account in _tf_of_type(tf_modules, "azurerm_cosmosdb_account"):
        assert account["local_authentication_disabled"] is True
        assert account["access_key_metadata_writes_enabled"] is False
    for workspace in _tf_of_type(tf_modules, "azurerm_log_analytics_workspace"):
        assert workspace["local_authentication_enabled"] is False
    for component in _tf_of_type(tf_modules, "azurerm_application_insights"):
        assert component["local_authentication_disabled"] is True
    for server in _tf_of_type(tf_modules, "azurerm_postgresql_flexible_server"):
        auth = server["authentication"][0]
        assert auth["active_directory_auth_enabled"] is True and auth["password_auth_enabled"] is False
        assert "administrator_password" not in server and "administrator_login" not in server
    for kind in ("azurerm_linux_function_app", "azurerm_linux_function_app_slot"):
        for site in _tf_of_type(tf_modules, kind):
            assert site["ftp_publish_basic_authentication_enabled"] is False
            assert site["webdeploy_publish_basic_authentication_enabled"] is False


def _bicep_private_targets(file: BicepFile) -> set[str]:
    """Symbolic names that a private endpoint in this file connects to (privateLinkServiceId: <name>.id)."""
    targets = set()
    for resource in file.resources.values():
        if resource["type"] != "Microsoft.Network/privateEndpoints":
            continue
        for connection in _props(resource)["privateLinkServiceConnections"]:
            target = connection["properties"]["privateLinkServiceId"]
            targets.add(
                re.sub(r"^\$\{|\.id\}?$", "", target)
                if isinstance(target, str)
                else target["operator"]["operands"]["operand_1"]
            )
    return targets


def test_no_public_network_access_where_a_private_path_is_declared(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    checked = 0
    for file in bicep_modules.values():
        for name in _bicep_private_targets(file):
            properties = _props(file.resources[name])
            assert properties["publicNetworkAccess"] == "Disabled", f"{file.path.name}: {name}"
            checked += 1
    for server in _bicep_of_type(bicep_modules, "Microsoft.DBforPostgreSQL/flexibleServers"):
        network = _props(server)["network"]
        assert network["delegatedSubnetResourceId"] and network["publicNetworkAccess"] == "Disabled"
        checked += 1
    assert checked >= 4  # storage, event hubs, cosmos, postgres

    checked = 0
    for module_name, module in tf_modules.items():
        for endpoint in module.of_type("azurerm_private_endpoint").values():
            target = endpoint["private_service_connection"][0]["private_connection_resource_id"]
            if target == "${azapi_resource.scheduler.id}":
                # The Durable Task Scheduler (ADR 0024), declared through azapi: its ARM body says it.
                scheduler = module.of_type("azapi_resource")["scheduler"]
                assert scheduler["body"]["properties"]["publicNetworkAccess"] == "Disabled", module_name
                checked += 1
                continue
            match = re.fullmatch(r"\$\{(\w+)\.(\w+)\.id\}", target)
            assert match, target
            resource = module.of_type(match.group(1))[match.group(2)]
            assert resource["public_network_access_enabled"] is False, target
            checked += 1
    for server in _tf_of_type(tf_modules, "azurerm_postgresql_flexible_server"):
        assert server["delegated_subnet_id"] and server["public_network_access_enabled"] is False
        checked += 1
    assert checked >= 4


def test_the_function_app_admits_only_the_gateway(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    for kind in ("Microsoft.Web/sites", "Microsoft.Web/sites/slots"):
        for site in _bicep_of_type(bicep_modules, kind):
            config = _props(site)["siteConfig"]
            assert config["ipSecurityRestrictionsDefaultAction"] == "Deny"
            assert [rule["action"] for rule in config["ipSecurityRestrictions"]] == ["Allow"]
    for kind in ("azurerm_linux_function_app", "azurerm_linux_function_app_slot"):
        for site in _tf_of_type(tf_modules, kind):
            config = site["site_config"][0]
            assert config["ip_restriction_default_action"] == "Deny"
            assert [rule["action"] for rule in config["ip_restriction"]] == ["Allow"]


def _bicep_diagnosed(file: BicepFile) -> set[str]:
    return {
        _config(resource)["scope"]
        for resource in file.resources.values()
        if resource["type"] == "Microsoft.Insights/diagnosticSettings"
    }


def test_diagnostics_on_every_resource_that_supports_them(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    for file in bicep_modules.values():
        diagnosed = _bicep_diagnosed(file)
        for name, resource in file.resources.items():
            if resource["type"] in DIAGNOSED:
                assert name in diagnosed, f"{file.path.name}: {name} ({resource['type']}) has no diagnostic setting"
        for setting in file.resources.values():
            if setting["type"] == "Microsoft.Insights/diagnosticSettings":
                assert _props(setting)["workspaceId"], f"{file.path.name}: a diagnostic setting has no workspace"

    for module_name, module in tf_modules.items():
        targets = [body["target_resource_id"] for body in module.of_type("azurerm_monitor_diagnostic_setting").values()]
        for resource_type in {t for t in DIAGNOSED.values() if t}:
            for name in module.of_type(resource_type):
                assert any(f"{resource_type}.{name}.id" in target for target in targets), (
                    f"{module_name}: {resource_type}.{name} has no diagnostic setting"
                )
    storage_targets = [
        body["target_resource_id"]
        for body in tf_modules["storage"].of_type("azurerm_monitor_diagnostic_setting").values()
    ]
    assert any("Services/default" in target for target in storage_targets)
    assert tf_modules["storage"].locals["private_services"] == ["blob", "queue", "table"]


def test_storage_holds_the_artifacts_container_and_cosmos_the_audit_container(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    (audit,) = _bicep_of_type(bicep_modules, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    resource = _props(audit)["resource"]
    assert resource["partitionKey"]["paths"] == ["/tenantId"]
    assert "defaultTtl" in resource
    (container,) = _tf_of_type(tf_modules, "azurerm_cosmosdb_sql_container")
    assert container["partition_key_paths"] == ["/tenantId"]
    assert "default_ttl" in container
    (artifacts,) = _tf_of_type(tf_modules, "azurerm_storage_container")
    assert artifacts["container_access_type"] == "private"


def test_function_app_runs_python_3_11_on_elastic_premium_with_a_staging_slot(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    (plan,) = _bicep_of_type(bicep_modules, "Microsoft.Web/serverfarms")
    assert _config(plan)["sku"] == {"name": "EP1", "tier": "ElasticPremium"}
    for kind in ("Microsoft.Web/sites", "Microsoft.Web/sites/slots"):
        (site,) = _bicep_of_type(bicep_modules, kind)
        assert _props(site)["siteConfig"]["linuxFxVersion"] == "PYTHON|3.11"
        assert _config(site)["identity"]["type"] == "UserAssigned"
    (tf_plan,) = _tf_of_type(tf_modules, "azurerm_service_plan")
    assert tf_plan["sku_name"] == "EP1"
    for kind in ("azurerm_linux_function_app", "azurerm_linux_function_app_slot"):
        (site,) = _tf_of_type(tf_modules, kind)
        assert site["site_config"][0]["application_stack"][0]["python_version"] == "3.11"
        assert site["identity"][0]["type"] == "UserAssigned"
    (slot,) = _tf_of_type(tf_modules, "azurerm_linux_function_app_slot")
    assert slot["name"] == "staging"


def test_the_function_app_carries_the_runtime_and_the_control_identity(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    """Two user-assigned identities on site and slot: two Postgres logins, one per role (ADR 0018)."""
    for kind in ("Microsoft.Web/sites", "Microsoft.Web/sites/slots"):
        (site,) = _bicep_of_type(bicep_modules, kind)
        assert set(_config(site)["identity"]["userAssignedIdentities"]) == {"'${identityId}'", "'${controlIdentityId}'"}
        assert _props(site)["keyVaultReferenceIdentity"] == "identityId"
    for kind in ("azurerm_linux_function_app", "azurerm_linux_function_app_slot"):
        (site,) = _tf_of_type(tf_modules, kind)
        assert site["identity"][0]["identity_ids"] == ["${var.identity_id}", "${var.control_identity_id}"]
        assert site["key_vault_reference_identity_id"] == "${var.identity_id}"


def _iac_files() -> list[Path]:
    return sorted([*BICEP.rglob("*.bicep"), *TERRAFORM.rglob("*.tf")])


def test_every_checkov_skip_carries_a_reason():
    skips = 0
    for path in _iac_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = re.search(r"checkov:skip=([A-Z0-9_]+)(.*)", line)
            if match:
                skips += 1
                reason = match.group(2).lstrip(":").strip()
                assert len(reason) >= 20, f"{path.relative_to(BICEP.parent)}:{number}: skip without a reason"
    assert skips > 0


def test_nothing_secret_is_written_into_the_stacks():
    forbidden = re.compile(
        r"AccountKey=|SharedAccessKey|listKeys\(|primary_access_key|primary_connection_string|"
        r"administrator_password|administratorLoginPassword",
        re.IGNORECASE,
    )
    for path in _iac_files():
        assert not forbidden.search(path.read_text(encoding="utf-8")), path
