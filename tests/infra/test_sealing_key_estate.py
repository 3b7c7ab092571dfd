# intent_ref: platform.estate
"""The sealing key's vault in both stacks (ADR 0040): RBAC only, purge protection, the runtime identity may read its
secrets, and the app's QP_SEALING_KEY is a Key Vault reference to `qp-sealing-key`, never a value."""

from __future__ import annotations

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
    assert bicep["QP_SEALING_KEY"] == "@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=qp-sealing-key)"
    terraform = tf_modules["functionapp"].locals["app_settings"]
    assert (
        terraform["QP_SEALING_KEY"] == "@Microsoft.KeyVault(VaultName=${var.key_vault_name};SecretName=qp-sealing-key)"
    )
