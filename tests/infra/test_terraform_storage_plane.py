# intent_ref: platform.estate
"""Terraform plans and applies the private storage account from outside its network: the azurerm provider never
touches the storage data plane (which answers 403 there), so nothing in the stack may need it."""

from __future__ import annotations

import re
from typing import Any

import hcl2

from tests.infra.conftest import TERRAFORM, TerraformModule, unquote

# The release that brought `features { storage { data_plane_available } }` with the ARM-only resources that replace
# the account's data-plane blocks (hashicorp/terraform-provider-azurerm#27818).
DATA_PLANE_FLAG_SINCE = (4, 9)
# Storage resources that reach the account's data plane whatever the flag says (blob and file contents, SAS).
DATA_PLANE_ONLY = {"azurerm_storage_blob", "azurerm_storage_share_file", "azurerm_storage_share_directory"}


def _load(name: str) -> dict[str, Any]:
    with (TERRAFORM / name).open(encoding="utf-8") as handle:
        return unquote(hcl2.load(handle))


def test_the_azurerm_provider_stays_off_the_storage_data_plane() -> None:
    (azurerm,) = [block["azurerm"] for block in _load("providers.tf")["provider"] if "azurerm" in block]
    (features,) = azurerm["features"]
    (storage,) = features.get("storage", [{}])
    # Without it azurerm 4.x reads queue and static-website properties on every refresh: 403 outside the VNet
    # (hashicorp/terraform-provider-azurerm#33454).
    assert storage.get("data_plane_available") is False


def test_the_azurerm_version_floor_has_the_flag() -> None:
    (block,) = _load("terraform.tf")["terraform"]
    (providers,) = block["required_providers"]
    constraint = providers["azurerm"]["version"]
    floors = re.findall(r"(?:~>|>=|=)\s*(\d+)\.(\d+)", constraint)
    assert floors, constraint
    assert max((int(major), int(minor)) for major, minor in floors) >= DATA_PLANE_FLAG_SINCE, constraint
    assert re.match(r"~>\s*4\.\d+$", constraint), "5.x drops the 4.x storage blocks: a major upgrade is its own change"


def test_the_storage_module_needs_no_data_plane(tf_modules: dict[str, TerraformModule]) -> None:
    storage = tf_modules["storage"]
    (account,) = storage.of_type("azurerm_storage_account").values()
    # With the flag off the provider refuses these blocks; they are data-plane settings.
    assert "queue_properties" not in account and "static_website" not in account
    for module_name, module in tf_modules.items():
        assert not DATA_PLANE_ONLY & module.resources.keys(), module_name
        for name, body in module.of_type("azurerm_storage_container").items():
            # The id form goes through Azure Resource Manager; the account-name form through the data plane.
            assert "storage_account_id" in body and "storage_account_name" not in body, f"{module_name}: {name}"
    assert storage.of_type("azurerm_storage_container"), "the artifacts container is declared here"
