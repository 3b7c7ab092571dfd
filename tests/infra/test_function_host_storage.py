# intent_ref: platform.estate
"""The Terraform function app and its slot reach the host's storage through the runtime identity, with no content
share and no key (ADR 0013), the way bicep/modules/functionapp.bicep does."""

from __future__ import annotations

from typing import Any

from tests.infra.conftest import BicepFile, TerraformModule

SITE_KINDS = ("azurerm_linux_function_app", "azurerm_linux_function_app_slot")
# Without these arguments azurerm writes an AzureWebJobsStorage connection string from an empty name and key, and on
# Elastic Premium an Azure Files content share and AzureWebJobsDashboard with it: the host cannot start.
IDENTITY_STORAGE_ARGUMENTS = {
    "storage_account_name": "${var.storage_account_name}",
    "storage_uses_managed_identity": True,
    "content_share_force_disabled": True,
    "builtin_logging_enabled": False,
}
# Settings that hold or imply a storage key or a content share; neither stack may write them itself.
KEYED_STORAGE_SETTINGS = {
    "AzureWebJobsStorage",
    "AzureWebJobsDashboard",
    "AzureWebJobsDashboard__accountName",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
}
# The provider writes this one from storage_account_name and never reads it back into app_settings.
PROVIDER_WRITTEN = '${app_settings["AzureWebJobsStorage__accountName"]}'


def _sites(tf_modules: dict[str, TerraformModule]) -> dict[str, dict[str, Any]]:
    """The function app and its slot, by resource type."""
    module = tf_modules["functionapp"]
    sites = {kind: body for kind in SITE_KINDS for body in module.of_type(kind).values()}
    assert set(sites) == set(SITE_KINDS)
    return sites


def test_site_and_slot_use_the_identity_for_host_storage_without_a_content_share(
    tf_modules: dict[str, TerraformModule],
) -> None:
    for kind, body in _sites(tf_modules).items():
        assert {name: body.get(name) for name in IDENTITY_STORAGE_ARGUMENTS} == IDENTITY_STORAGE_ARGUMENTS, kind
        assert "storage_account_access_key" not in body and "storage_key_vault_secret_id" not in body, kind


def test_the_user_assigned_identity_is_named_in_the_app_settings(tf_modules: dict[str, TerraformModule]) -> None:
    """azurerm only writes the account name, which alone would mean a system-assigned identity (there is none)."""
    settings = tf_modules["functionapp"].locals["app_settings"]
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "${var.identity_client_id}"
    assert settings["AzureWebJobsStorage__accountName"] == IDENTITY_STORAGE_ARGUMENTS["storage_account_name"]
    assert not KEYED_STORAGE_SETTINGS & settings.keys()


def test_the_setting_the_provider_writes_does_not_show_as_a_change_on_every_plan(
    tf_modules: dict[str, TerraformModule],
) -> None:
    for kind, body in _sites(tf_modules).items():
        ignored = [item for block in body.get("lifecycle", []) for item in block.get("ignore_changes", [])]
        assert PROVIDER_WRITTEN in ignored, kind


def test_the_root_gives_the_module_the_estates_storage_account(tf_main_modules: dict[str, dict[str, Any]]) -> None:
    assert tf_main_modules["functionapp"]["storage_account_name"] == "${module.storage.name}"


def test_bicep_names_the_same_account_and_identity_and_no_content_share(bicep_modules: dict[str, BicepFile]) -> None:
    settings = {item["name"]: item["value"] for item in bicep_modules["functionapp"].variables["appSettings"]}
    assert settings["AzureWebJobsStorage__accountName"] == "storageAccountName"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert not KEYED_STORAGE_SETTINGS & settings.keys()
