# intent_ref: platform.estate
"""Every app setting the code reads is set in both stacks, with Azure values and without keys."""

from __future__ import annotations

import re
from typing import Any

from shared.config import Settings
from tests.infra.conftest import BICEP, BicepFile, TerraformModule

# Settings the code reads that Azure deliberately leaves unset, and why.
INTENTIONALLY_ABSENT = {
    "QP_BLOB_CONNECTION_STRING": "local only (Azurite); in Azure the identity-based QP_BLOB_ACCOUNT_URL is used",
    "QP_DATABASE_OWNER_URL": "migrations run from the operators' runner, never from the function app",
}
# Azure values the code's Azure code paths depend on.
EXPECTED_VALUES = {
    "QP_EVENTHUB_BACKEND": "azure",
    "QP_AUDIT_BACKEND": "cosmos",
    "QP_DATABASE_ENTRA_AUTH": "true",
    "QP_ALLOW_PRIVATE_NETWORK_HOSTS": "false",
    "QP_ARTIFACTS_CONTAINER": "artifacts",
    "AzureWebJobsStorage__credential": "managedidentity",
    "EventHubConnection__credential": "managedidentity",
    # The gateway is an HTTP-stream function (its events stream as server-sent events): the worker needs this.
    "PYTHON_ENABLE_INIT_INDEXING": "1",
}
IDENTITY_CONNECTIONS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "EventHubConnection__fullyQualifiedNamespace",
    "EventHubConnection__credential",
    "EventHubConnection__clientId",
}


def _bicep_settings(bicep_modules: dict[str, BicepFile]) -> dict[str, Any]:
    return {item["name"]: item["value"] for item in bicep_modules["functionapp"].variables["appSettings"]}


def _tf_settings(tf_modules: dict[str, TerraformModule]) -> dict[str, Any]:
    module = tf_modules["functionapp"]
    settings = dict(module.locals["app_settings"])
    # azurerm sets these three through dedicated arguments instead of app_settings.
    site = module.of_type("azurerm_linux_function_app")["main"]
    settings["FUNCTIONS_EXTENSION_VERSION"] = site["functions_extension_version"]
    settings["FUNCTIONS_WORKER_RUNTIME"] = "python" if site["site_config"][0]["application_stack"] else None
    settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] = site["site_config"][0]["application_insights_connection_string"]
    for kind in ("azurerm_linux_function_app", "azurerm_linux_function_app_slot"):
        for body in module.of_type(kind).values():
            assert body["app_settings"] == "${local.app_settings}", f"{kind} does not use local.app_settings"
    return settings


def _code_settings() -> set[str]:
    return set(Settings.model_fields) - INTENTIONALLY_ABSENT.keys()


def test_the_allow_list_names_real_settings():
    assert set(INTENTIONALLY_ABSENT) <= set(Settings.model_fields)


def test_every_setting_the_code_reads_is_set_in_bicep(bicep_modules: dict[str, BicepFile]):
    missing = _code_settings() - _bicep_settings(bicep_modules).keys()
    assert not missing, f"add to bicep/modules/functionapp.bicep appSettings: {sorted(missing)}"


def test_every_setting_the_code_reads_is_set_in_terraform(tf_modules: dict[str, TerraformModule]):
    missing = _code_settings() - _tf_settings(tf_modules).keys()
    assert not missing, f"add to terraform/modules/functionapp app_settings: {sorted(missing)}"


def test_both_stacks_set_the_same_settings(bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]):
    assert set(_bicep_settings(bicep_modules)) == set(_tf_settings(tf_modules))


def test_azure_values_and_identity_based_connections(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    for settings in (_bicep_settings(bicep_modules), _tf_settings(tf_modules)):
        for name, value in EXPECTED_VALUES.items():
            assert settings[name] == value, name
        assert IDENTITY_CONNECTIONS <= settings.keys()
        assert "AzureWebJobsStorage" not in settings and "EventHubConnection" not in settings
        assert not INTENTIONALLY_ABSENT.keys() & settings.keys()
        assert "organizations/v2.0/.well-known/openid-configuration" in settings["QP_AUTH_METADATA_URL"]
        for name, value in settings.items():
            text = str(value)
            assert "AccountKey=" not in text and "SharedAccessKey" not in text, name
            assert "password" not in text.lower(), name
            if name.endswith("CONNECTION_STRING"):
                assert name == "APPLICATIONINSIGHTS_CONNECTION_STRING", name
        assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].startswith("Authorization=AAD")


def test_literal_defaults_match_the_code(bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]):
    """Where a stack writes a literal, it is a value the code accepts (validated by the Settings model itself)."""
    for settings in (_bicep_settings(bicep_modules), _tf_settings(tf_modules)):
        literal = {
            name: value
            for name, value in settings.items()
            if name in Settings.model_fields and isinstance(value, str) and "${" not in value
        }
        azure = {
            **literal,
            "QP_DATABASE_URL": "host=x dbname=quantum user=id-dev-x",
            "QP_DATABASE_CONTROL_URL": "host=x dbname=quantum user=id-dev-x-control",
            "QP_DATABASE_CONTROL_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
            "QP_BLOB_ACCOUNT_URL": "https://x",
            "EventHubConnection__fullyQualifiedNamespace": "x.servicebus.windows.net",
            "QP_COSMOS_ENDPOINT": "https://x.documents.azure.com:443/",
            "QP_TASK_HUB": "Quantumdev",
            "QP_ENVIRONMENT": "dev",
            # The API's client id: the `aud` of every v2 token (test_the_audience_is_the_api_client_id).
            "QP_AUTH_AUDIENCE": "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
            "QP_SEALING_KEY": "a resolved Key Vault reference: random key material of 64 characters",
            "QP_OPERATOR_ENTRA_TENANT_ID": "00000000-0000-0000-0000-0000000000aa",
        }
        Settings.model_validate(azure)


def test_each_pool_connects_as_its_own_identity(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    """The runtime and the control plane are two Postgres logins, each an identity's principal (ADR 0018)."""
    bicep, terraform = _bicep_settings(bicep_modules), _tf_settings(tf_modules)
    assert "user=${identityName} " in bicep["QP_DATABASE_URL"]
    assert "user=${controlIdentityName} " in bicep["QP_DATABASE_CONTROL_URL"]
    assert bicep["QP_DATABASE_CONTROL_CLIENT_ID"] == "controlIdentityClientId"
    assert bicep["AZURE_CLIENT_ID"] == "identityClientId"
    assert "user=${var.identity_name} " in terraform["QP_DATABASE_URL"]
    assert "user=${var.control_identity_name} " in terraform["QP_DATABASE_CONTROL_URL"]
    assert terraform["QP_DATABASE_CONTROL_CLIENT_ID"] == "${var.control_identity_client_id}"
    assert terraform["AZURE_CLIENT_ID"] == "${var.identity_client_id}"


def test_platform_admin_counts_only_from_the_deployments_own_tenant(
    bicep_modules: dict[str, BicepFile],
    tf_modules: dict[str, TerraformModule],
    bicep_main: BicepFile,
    tf_main_modules: dict[str, dict[str, Any]],
) -> None:
    """The API is multi-tenant and customers assign its roles themselves: the operators' tenant is the one the API's
    registration lives in, which both stacks already know."""
    assert _bicep_settings(bicep_modules)["QP_OPERATOR_ENTRA_TENANT_ID"] == "operatorTenantId"
    assert bicep_main.parsed["modules"]["functionApp"]["config"]["params"]["operatorTenantId"] == "entraTenantId"
    assert _tf_settings(tf_modules)["QP_OPERATOR_ENTRA_TENANT_ID"] == "${var.operator_entra_tenant_id}"
    assert tf_main_modules["functionapp"]["operator_entra_tenant_id"] == "${var.entra_tenant_id}"


# The app accepts v2 tokens only (ADR 0010), and a v2 token's `aud` is always the API's client id, never its
# app id URI; APIM's validate-jwt checks one audience. A stack fed the api:// URI answered every call 401.
A_CLIENT_ID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
NOT_CLIENT_IDS = ["api://quantum-platform", f"api://quantum-platform,{A_CLIENT_ID}", "", "quantum-platform"]


def _bicep_accepts(parameter: dict[str, Any], value: str) -> bool:
    """What ARM checks of a string parameter before the deployment starts: its length bounds and allowed values."""
    bounds = {decorator["type"]: decorator["argument"] for decorator in parameter["decorators"]}
    if "min_length" in bounds and len(value) < bounds["min_length"]:
        return False
    if "max_length" in bounds and len(value) > bounds["max_length"]:
        return False
    return "allowed" not in bounds or value in bounds["allowed"]


def _tf_accepts(variable: dict[str, Any], value: str) -> bool:
    """The variable's `can(regex(...))` validation, evaluated as Terraform would (RE2 and re agree on this pattern)."""
    (validation,) = variable["validation"]
    match = re.fullmatch(r'\$\{can\(regex\("(.+)", var\.\w+\)\)\}', validation["condition"])
    assert match, f"expected a can(regex(...)) validation: {validation['condition']}"
    return re.search(match.group(1).replace("\\\\", "\\"), value) is not None


def test_the_audience_is_the_api_client_id(
    bicep_main: BicepFile,
    bicep_modules: dict[str, BicepFile],
    tf_root: TerraformModule,
    tf_modules: dict[str, TerraformModule],
    tf_main_modules: dict[str, dict[str, Any]],
) -> None:
    """QP_AUTH_AUDIENCE's first (only) entry and APIM's audiences are the required client id input of each stack."""
    assert "apiAudience" not in bicep_main.parsed["parameters"] and "api_audience" not in tf_root.variables
    # Bicep: a required parameter (no default) handed to the app and to the gateway as is.
    assert bicep_main.parsed["parameters"]["apiClientId"]["default"] is None
    config = bicep_main.parsed["modules"]
    assert config["functionApp"]["config"]["params"]["apiClientId"] == "apiClientId"
    assert config["apim"]["config"]["params"]["apiClientId"] == "apiClientId"
    assert _bicep_settings(bicep_modules)["QP_AUTH_AUDIENCE"].split(",")[0] == "apiClientId"
    named = {key.strip("'"): value for key, value in bicep_modules["apim"].variables["namedValues"].items()}
    assert named["api-audience"] == named["backend-audience"] == "apiClientId"
    # Terraform: the same, from var.api_client_id.
    assert "default" not in tf_root.variables["api_client_id"]
    assert tf_main_modules["functionapp"]["api_client_id"] == "${var.api_client_id}"
    assert tf_main_modules["apim"]["api_client_id"] == "${var.api_client_id}"
    assert _tf_settings(tf_modules)["QP_AUTH_AUDIENCE"].split(",")[0] == "${var.api_client_id}"
    named = tf_modules["apim"].locals["named_values"]
    assert named["api-audience"] == named["backend-audience"] == "${var.api_client_id}"
    # The parameter file has no fallback audience: an unset QP_API_CLIENT_ID stops the build instead.
    params = (BICEP / "main.bicepparam").read_text(encoding="utf-8")
    assert "param apiClientId = readEnvironmentVariable('QP_API_CLIENT_ID')" in params
    assert "api://" not in params


def test_a_first_audience_that_is_not_a_client_id_is_refused_by_both_stacks(
    bicep_main: BicepFile, bicep_modules: dict[str, BicepFile], tf_root: TerraformModule
) -> None:
    for parameter in (
        bicep_main.parsed["parameters"]["apiClientId"],
        bicep_modules["functionapp"].parsed["parameters"]["apiClientId"],
        bicep_modules["apim"].parsed["parameters"]["apiClientId"],
    ):
        assert _bicep_accepts(parameter, A_CLIENT_ID)
        for value in NOT_CLIENT_IDS:
            assert not _bicep_accepts(parameter, value), value
    variable = tf_root.variables["api_client_id"]
    assert _tf_accepts(variable, A_CLIENT_ID) and _tf_accepts(variable, A_CLIENT_ID.upper())
    for value in [*NOT_CLIENT_IDS, "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5fz", "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5"]:
        assert not _tf_accepts(variable, value), value
