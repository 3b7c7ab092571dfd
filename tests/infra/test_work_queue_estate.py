# intent_ref: platform.estate
"""No tenant identity gets data-plane rights on the Event Hubs namespace (ADR 0027): every role assignment of both
stacks goes to the function app's own identity, and `module-work` is read only by the app's consumer group."""

from __future__ import annotations

import re

from tests.infra.conftest import BICEP, TERRAFORM

_BICEP_ASSIGNMENT = re.compile(
    r"resource \w+ 'Microsoft\.Authorization/roleAssignments@[^']+' = [^\n]*\n(.*?)\n}", re.S
)


def _bicep_files() -> list[str]:
    return [path.read_text(encoding="utf-8") for path in sorted(BICEP.rglob("*.bicep"))]


def _terraform_files() -> list[str]:
    return [path.read_text(encoding="utf-8") for path in sorted(TERRAFORM.rglob("*.tf"))]


def test_every_bicep_role_assignment_goes_to_the_function_identity() -> None:
    assignments = [body for text in _bicep_files() for body in _BICEP_ASSIGNMENT.findall(text)]
    assert len(assignments) >= 4  # storage, event hubs, telemetry, durable
    for body in assignments:
        assert re.findall(r"principalId: (\w+)", body) == ["functionPrincipalId"], body


def test_every_terraform_role_assignment_goes_to_the_function_identity() -> None:
    text = "\n".join(_terraform_files())
    blocks = re.findall(r'resource "azurerm_role_assignment" "\w+" \{(.*?)\n\}', text, re.S)
    assert blocks
    for block in blocks:
        assert re.findall(r"principal_id\s*=\s*([\w.]+)", block) == ["var.function_principal_id"], block
    # Cosmos data-plane assignments, too: only the function identity.
    for block in re.findall(r'resource "azurerm_cosmosdb_sql_role_assignment" "\w+" \{(.*?)\n\}', text, re.S):
        assert re.findall(r"principal_id\s*=\s*([\w.]+)", block) == ["var.function_principal_id"], block


def test_module_work_has_only_the_platforms_consumer_group() -> None:
    bicep = "\n".join(_bicep_files())
    terraform = "\n".join(_terraform_files())
    assert re.findall(r"hub: 'module-work', group: '([\w$-]+)'", bicep) == ["module-worker"]
    assert re.findall(r'hub = "module-work", group = "([\w$-]+)"', terraform) == ["module-worker"]
