# intent_ref: platform.estate
"""The sealing key's vault in both stacks (ADR 0040): RBAC only, purge protection, the runtime identity may read its
secrets, and the app's QP_SEALING_KEY is a Key Vault reference to `qp-sealing-key`, never a value."""

from __future__ import annotations

from typing import Any

from tests.infra.conftest import BicepFile, TerraformModule

SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"


def test_the_vault_authorizes_by_rbac_and_cannot_be_purged(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
) -> None:
    vault = bicep_modules["keyvault"].resources["vault"]["config"]["properties"]
    assert vault["enableRbacAuthorization"] is True and vault["enablePurgeProtection"] is True
    assert "accessPolicies" not in vault
    assert vault["networkAcls"]["defaultAction"] == "Deny"
    body = tf_modules["keyvault"].of_type("azurerm_key_vault")["main"]
    assert body["rbac_authorization_enabled"] is True and body["purge_protection_enabled"] is True
    assert "access_policy" not in body
    assert body["network_acls"][0]["default_action"] == "Deny"


def test_no_stack_writes_the_key(bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]) -> None:
    """A redeployment must never replace the key: it is created once by operators (docs/runbooks/secrets.md)."""
    types = {resource["type"] for file in bicep_modules.values() for resource in file.resources.values()}
    assert "Microsoft.KeyVault/vaults/secrets" not in types
    assert not any(module.of_type("azurerm_key_vault_secret") for module in tf_modules.values())


def test_the_runtime_identity_reads_the_vaults_secrets(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
) -> None:
    rbac = bicep_modules["rbac"]
    assert rbac.variables["roles"]["keyVaultSecretsUser"] == SECRETS_USER
    role = rbac.resources["keyVaultRole"]["config"]
    assert role["scope"] == "vault" and role["properties"]["principalId"] == "functionPrincipalId"
    assignment = tf_modules["rbac"].locals["assignments"]["key_vault_secrets_user"]
    assert assignment == {"scope": "${var.key_vault_id}", "role": "Key Vault Secrets User"}


def test_the_app_reads_the_key_by_a_key_vault_reference(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
) -> None:
    bicep = {item["name"]: item["value"] for item in bicep_modules["functionapp"].variables["appSettings"]}
    reference = "@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${%s})"
    assert bicep["QP_SEALING_KEY"] == reference % "sealingKeySecretName"
    terraform = tf_modules["functionapp"].locals["app_settings"]
    assert (
        terraform["QP_SEALING_KEY"]
        == "@Microsoft.KeyVault(VaultName=${var.key_vault_name};SecretName=${var.sealing_key_secret_name})"
    )


def test_a_rotation_lives_in_the_stacks_and_is_off_by_default(
    bicep_main: BicepFile,
    bicep_modules: dict[str, BicepFile],
    tf_root: TerraformModule,
    tf_modules: dict[str, TerraformModule],
    tf_main_modules: dict[str, dict[str, Any]],
) -> None:
    """Set by hand (the runbook before), a rotation was undone by the next provisioning or a swap once values were
    sealed again under the new key: every sealed secret unreadable. Both keys are named by parameters now."""
    parameters = bicep_main.parsed["parameters"]
    assert parameters["sealingKeySecretName"]["default"] == "qp-sealing-key"
    assert parameters["previousSealingKeySecretName"]["default"] == ""
    given = bicep_main.parsed["modules"]["functionApp"]["config"]["params"]
    assert given["sealingKeySecretName"] == "sealingKeySecretName"
    assert given["previousSealingKeySecretName"] == "previousSealingKeySecretName"
    bicep = {item["name"]: item["value"] for item in bicep_modules["functionapp"].variables["appSettings"]}
    reference = "@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${%s})"
    previous = bicep["QP_SEALING_KEY_PREVIOUS"]["operator"]["operands"]
    assert previous["true_value"] == ""  # empty means unset (shared/config.py)
    assert previous["false_value"] == reference % "previousSealingKeySecretName"

    assert tf_root.variables["sealing_key_secret_name"]["default"] == "qp-sealing-key"
    assert tf_root.variables["previous_sealing_key_secret_name"]["default"] == ""
    module = tf_main_modules["functionapp"]
    assert module["sealing_key_secret_name"] == "${var.sealing_key_secret_name}"
    assert module["previous_sealing_key_secret_name"] == "${var.previous_sealing_key_secret_name}"
    terraform = tf_modules["functionapp"].locals["app_settings"]["QP_SEALING_KEY_PREVIOUS"]
    assert terraform.startswith('${var.previous_sealing_key_secret_name == "" ? "" : "@Microsoft.KeyVault(')


def _accessor(expression: Any) -> str:
    """`identity.outputs.principalId` from the parsed Bicep property accessor (a plain name stays as it is)."""
    if isinstance(expression, str):
        return expression
    operands = expression["operator"]["operands"]
    return f"{_accessor(operands['operand_1'])}.{_accessor(operands['operand_2'])}"


def test_the_app_and_the_role_point_at_the_vault_the_stack_creates(
    bicep_main: BicepFile, tf_main_modules: dict[str, dict[str, Any]]
) -> None:
    """The reference names this estate's vault, and the reader is the runtime identity, not the control identity."""
    modules = bicep_main.parsed["modules"]
    assert modules["keyVault"]["detail"]["path"] == "modules/keyvault.bicep"
    assert _accessor(modules["keyVault"]["config"]["params"]["name"]) == "names.keyVault"
    assert _accessor(modules["functionApp"]["config"]["params"]["keyVaultName"]) == "keyVault.outputs.name"
    rbac = modules["rbac"]["config"]["params"]
    assert _accessor(rbac["keyVaultName"]) == "keyVault.outputs.name"
    assert _accessor(rbac["functionPrincipalId"]) == "identity.outputs.principalId"
    assert _accessor(modules["functionApp"]["config"]["params"]["identityId"]) == "identity.outputs.id"

    terraform = tf_main_modules
    assert terraform["keyvault"]["source"] == "./modules/keyvault"
    assert terraform["keyvault"]["name"] == "${local.names.keyVault}"
    assert terraform["functionapp"]["key_vault_name"] == "${module.keyvault.name}"
    assert terraform["rbac"]["key_vault_id"] == "${module.keyvault.id}"
    assert terraform["rbac"]["function_principal_id"] == "${module.identity.principal_id}"
    assert terraform["functionapp"]["identity_id"] == "${module.identity.id}"


def test_the_vault_is_reached_only_through_its_private_endpoint(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
) -> None:
    keyvault = bicep_modules["keyvault"].resources
    assert keyvault["vault"]["config"]["properties"]["publicNetworkAccess"] == "Disabled"
    (endpoint,) = (r for r in keyvault.values() if r["type"] == "Microsoft.Network/privateEndpoints")
    (connection,) = endpoint["config"]["properties"]["privateLinkServiceConnections"]
    assert connection["properties"]["groupIds"] == ["vault"]
    assert endpoint["config"]["properties"]["subnet"]["id"] == "privateEndpointSubnetId"
    # The network module's output picks the zone by its index in dnsZoneNames: that index must be the vault's zone.
    network = bicep_modules["network"]
    zone = network.parsed["outputs"]["privateDnsZoneIds"]["value"]["keyvault"]["operator"]["operands"]["operand_1"]
    index = zone["operator"]["operands"]
    assert index["operand_1"] == "zones"
    assert network.variables["dnsZoneNames"][index["operand_2"]] == "privatelink.vaultcore.azure.net"

    module = tf_modules["keyvault"]
    assert module.of_type("azurerm_key_vault")["main"]["public_network_access_enabled"] is False
    (tf_endpoint,) = module.of_type("azurerm_private_endpoint").values()
    assert tf_endpoint["private_service_connection"][0]["subresource_names"] == ["vault"]
    assert tf_endpoint["private_dns_zone_group"][0]["private_dns_zone_ids"] == [
        '${var.private_dns_zone_ids["keyvault"]}'
    ]
    assert tf_endpoint["subnet_id"] == "${var.private_endpoint_subnet_id}"
    assert tf_modules["network"].locals["dns_zones"]["keyvault"] == "privatelink.vaultcore.azure.net"
