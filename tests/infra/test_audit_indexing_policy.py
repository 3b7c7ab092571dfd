# intent_ref: platform.estate
"""The audit container both stacks create carries the indexing policy the audit store's queries need."""

from __future__ import annotations

from typing import Any

from shared.audit.cosmos import AUDIT_INDEXING_POLICY
from tests.infra.conftest import BicepFile, TerraformModule

# Cosmos adds this excluded path by itself; azurerm leaves it out when it reads a policy back, so Terraform must not
# state it (it would show as a change on every plan).
ETAG_PATH = '/"_etag"/?'


def _tf_policy(block: dict[str, Any]) -> dict[str, Any]:
    """An azurerm indexing_policy block in the service's shape: azurerm has no `automatic` (always on)."""
    return {
        "indexingMode": block["indexing_mode"],
        "automatic": True,
        "includedPaths": [{"path": item["path"]} for item in block.get("included_path", [])],
        "excludedPaths": [{"path": item["path"]} for item in block.get("excluded_path", [])] + [{"path": ETAG_PATH}],
        "compositeIndexes": [
            [{"path": index["path"], "order": index["order"].lower()} for index in composite["index"]]
            for composite in block.get("composite_index", [])
        ],
    }


def test_the_policy_carries_the_composite_index_of_the_page_order() -> None:
    """ORDER BY on two properties answers 400 without a composite index over both, in that order."""
    assert [
        {"path": "/occurredAt", "order": "descending"},
        {"path": "/id", "order": "descending"},
    ] in AUDIT_INDEXING_POLICY["compositeIndexes"]


def test_bicep_creates_the_audit_container_with_the_code_s_policy(bicep_modules: dict[str, BicepFile]) -> None:
    container = bicep_modules["cosmos"].resources["audit"]["config"]["properties"]["resource"]
    assert container["indexingPolicy"] == AUDIT_INDEXING_POLICY


def test_terraform_creates_the_audit_container_with_the_code_s_policy(tf_modules: dict[str, TerraformModule]) -> None:
    container = tf_modules["cosmos"].of_type("azurerm_cosmosdb_sql_container")["audit"]
    (block,) = container["indexing_policy"]
    assert ETAG_PATH not in [item["path"] for item in block.get("excluded_path", [])]
    assert _tf_policy(block) == AUDIT_INDEXING_POLICY
