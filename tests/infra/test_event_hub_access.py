# intent_ref: platform.estate
"""The runtime identity holds Event Hubs rights on exactly the hubs the code sends to and reads from, each role
scoped to its hub and never to the namespace (a namespace-wide Receiver read every tenant's `platform-events`), and
the estate declares a consumer group for each trigger of the code and no other."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest

from tests.infra.conftest import ROOT, BicepFile, TerraformModule

SENDER, RECEIVER = "Azure Event Hubs Data Sender", "Azure Event Hubs Data Receiver"
BICEP_ROLE_KEYS = {"eventHubsDataSender": SENDER, "eventHubsDataReceiver": RECEIVER}
CODE_DIRS = ("functions", "orchestrations", "shared")


def _code_trees() -> list[ast.Module]:
    paths = [ROOT / "function_app.py", *(path for folder in CODE_DIRS for path in (ROOT / folder).rglob("*.py"))]
    return [ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in paths]


def _string_constants(trees: list[ast.Module]) -> dict[str, str]:
    """Module-level `NAME = "literal"` of the code: the hub names are such constants (INTENT_REQUESTS_HUB, ...)."""
    constants: dict[str, str] = {}
    for tree in trees:
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        constants[target.id] = node.value.value
    return constants


def _resolve(node: ast.expr, constants: dict[str, str]) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    raise AssertionError(f"cannot tell which hub {ast.unparse(node)} names: use a literal or a module constant")


@pytest.fixture(scope="module")
def code_access() -> dict[str, Any]:
    """What the code does on Event Hubs: the hubs it sends to, and the (hub, consumer group) pairs it reads."""
    trees = _code_trees()
    constants = _string_constants(trees)
    sends: set[str] = set()
    reads: set[tuple[str, str]] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            if "event_hub_name" in keywords:  # an Event Hub trigger of the Functions programming model
                assert "consumer_group" in keywords, "every trigger names its own consumer group"
                reads.add(
                    (_resolve(keywords["event_hub_name"], constants), _resolve(keywords["consumer_group"], constants))
                )
            # EventPublisher.publish(hub, events): every send of the app goes through it (shared/events/publisher.py).
            if isinstance(node.func, ast.Attribute) and node.func.attr == "publish" and node.args:
                sends.add(_resolve(node.args[0], constants))
    return {"sends": sends, "reads": reads}


def test_the_code_sends_and_reads_what_the_review_found(code_access: dict[str, Any]) -> None:
    # Pinned, so that a new send or trigger is a deliberate change of the roles below, not a silent 401 in Azure.
    assert code_access["sends"] == {"module-work", "platform-events"}
    assert code_access["reads"] == {("intent-requests", "intake"), ("module-work", "module-worker")}


def _expected_grants(code_access: dict[str, Any]) -> set[tuple[str, str]]:
    return {(SENDER, hub) for hub in code_access["sends"]} | {(RECEIVER, hub) for hub, _ in code_access["reads"]}


def _bicep_event_hub_grants(rbac: BicepFile) -> set[tuple[str, str]]:
    existing = {name: res for name, res in rbac.parsed["resources"].items() if res.get("existing")}
    grants: set[tuple[str, str]] = set()
    for name, resource in rbac.resources.items():
        if resource["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        roles = [role for key, role in BICEP_ROLE_KEYS.items() if f"'{key}'" in repr(resource)]
        if not roles:
            continue
        # One assignment per hub and role, scoped to an `existing` hub (a loop has no single scope to read here).
        scope = existing.get(str(resource["config"].get("scope")))
        assert scope is not None, f"{name} is not scoped to one hub"
        assert scope["type"] == "Microsoft.EventHub/namespaces/eventhubs", f"{name} is not scoped to one hub"
        (role,) = roles
        grants.add((role, scope["config"]["name"]))
    return grants


def test_bicep_grants_each_event_hubs_role_on_its_hubs_only(
    bicep_modules: dict[str, BicepFile], bicep_main: BicepFile, code_access: dict[str, Any]
) -> None:
    grants = _bicep_event_hub_grants(bicep_modules["rbac"])
    assert grants == _expected_grants(code_access)
    assert {hub for _, hub in grants} <= set(bicep_main.variables["eventHubNames"])
    # Nothing of the estate is granted on the namespace itself.
    text = (ROOT / "bicep" / "modules" / "rbac.bicep").read_text(encoding="utf-8")
    assert not re.search(r"scope:\s*eventHubNamespace\b", text)


def test_terraform_grants_each_event_hubs_role_on_its_hubs_only(
    tf_modules: dict[str, TerraformModule], tf_main_modules: dict[str, dict[str, Any]], code_access: dict[str, Any]
) -> None:
    grants: set[tuple[str, str]] = set()
    for name, assignment in tf_modules["rbac"].locals["assignments"].items():
        if assignment["role"] not in (SENDER, RECEIVER):
            continue
        match = re.fullmatch(r'\$\{var\.event_hub_ids\["([a-z-]+)"\]\}', assignment["scope"])
        assert match, f"{name} is not scoped to one hub: {assignment['scope']}"
        grants.add((assignment["role"], match.group(1)))
    assert grants == _expected_grants(code_access)
    assert "event_hub_namespace_id" not in tf_modules["rbac"].variables
    assert tf_main_modules["rbac"]["event_hub_ids"] == "${module.eventhubs.hub_ids}"
    assert "azurerm_eventhub.main" in tf_modules["eventhubs"].outputs["hub_ids"]["value"]


def test_consumer_groups_are_the_triggers_of_the_code(
    bicep_main: BicepFile, tf_root: TerraformModule, code_access: dict[str, Any]
) -> None:
    """A group nothing reads (event-delivery on platform-events) only invites a reader the estate never granted."""
    bicep = {(group["hub"], group["group"]) for group in bicep_main.variables["eventHubConsumerGroups"]}
    terraform = {(group["hub"], group["group"]) for group in tf_root.locals["event_hub_consumer_groups"]}
    assert bicep == terraform == code_access["reads"]


def test_the_roles_follow_the_hubs_in_both_stacks(
    bicep_modules: dict[str, BicepFile], tf_modules: dict[str, TerraformModule]
):
    assert _bicep_event_hub_grants(bicep_modules["rbac"]) == {
        (assignment["role"], re.sub(r'.*\["([a-z-]+)"\].*', r"\1", assignment["scope"]))
        for assignment in tf_modules["rbac"].locals["assignments"].values()
        if assignment["role"] in (SENDER, RECEIVER)
    }
