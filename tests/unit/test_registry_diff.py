# intent_ref: platform.registry
"""Definition diffs: steps added, removed and changed with paths and values, field changes, and the summary."""

from __future__ import annotations

import copy
import json
from typing import Any

from shared.registry.diff import FieldChange, StepChange, diff_definitions
from shared.registry.model import IntentDefinitionIn
from tests.unit.test_registry_model import SEED_DEPLOY_WEB_APP, SEED_REGISTRY_EXAMPLE


def normalized(doc: dict[str, Any]) -> dict[str, Any]:
    return IntentDefinitionIn.model_validate(doc).definition.to_document()


V1 = normalized(SEED_DEPLOY_WEB_APP)


def test_identical_definitions_have_no_changes() -> None:
    diff = diff_definitions(V1, copy.deepcopy(V1))
    assert diff.is_empty
    assert diff.summary == "No changes."


def test_a_changed_parameter_and_an_added_field_of_one_step() -> None:
    v2 = copy.deepcopy(V1)
    v2["steps"][2]["params"]["replicas"] = 5
    v2["steps"][2]["timeout_s"] = 600
    diff = diff_definitions(V1, v2)
    assert (diff.steps_added, diff.steps_removed, diff.fields_changed) == ((), (), ())
    assert diff.steps_changed == (
        StepChange(
            "deploy-to-kubernetes",
            (
                FieldChange("/params/replicas", "changed", 3, 5),
                FieldChange("/timeout_s", "added", new=600),
            ),
        ),
    )
    assert diff.summary == (
        "The new version changes 1 step (deploy-to-kubernetes: params/replicas 3 → 5; timeout_s added (600))."
    )


def test_steps_added_and_removed_are_matched_by_id() -> None:
    v2 = copy.deepcopy(V1)
    removed = v2["steps"].pop(1)
    v2["steps"][1]["depends_on"] = ["build-docker-image"]
    v2["steps"].append(
        {"id": "notify", "action": "event.emit", "params": {"type": "deployed"}, "depends_on": ["deploy-to-kubernetes"]}
    )
    diff = diff_definitions(V1, v2)
    assert removed["id"] == "push-to-registry"
    assert diff.steps_added == ("notify",)
    assert diff.steps_removed == ("push-to-registry",)
    assert diff.steps_changed == (
        StepChange(
            "deploy-to-kubernetes",
            (FieldChange("/depends_on", "changed", ["push-to-registry"], ["build-docker-image"]),),
        ),
    )
    assert not diff.steps_reordered
    assert diff.summary == (
        "The new version adds 1 step (notify), removes 1 step (push-to-registry) and changes 1 step "
        '(deploy-to-kubernetes: depends_on ["push-to-registry"] → ["build-docker-image"]).'
    )


def test_top_level_fields_and_nested_input_schema_changes() -> None:
    old = {**V1, "inputs": {"type": "object", "properties": {"version": {"type": "string"}}}}
    new = {
        **V1,
        "target": "staging",
        "inputs": {
            "type": "object",
            "properties": {"version": {"type": "string", "minLength": 1}, "region": {"type": "string"}},
        },
    }
    diff = diff_definitions(old, new)
    assert diff.steps_changed == ()
    assert diff.fields_changed == (
        FieldChange("/target", "changed", "production", "staging"),
        FieldChange("/inputs/properties/version/minLength", "added", new=1),
        FieldChange("/inputs/properties/region", "added", new={"type": "string"}),
    )
    assert diff.summary.startswith('The new version changes target "production" → "staging", ')


def test_removed_values_and_json_equality() -> None:
    old = {
        "target": "x",
        "steps": [
            {"id": "a", "action": "wait", "params": {"seconds": 1}, "depends_on": [], "when": "exists ${inputs.go}"}
        ],
    }
    new = {"target": "x", "steps": [{"id": "a", "action": "wait", "params": {"seconds": 1.0}, "depends_on": []}]}
    diff = diff_definitions(old, new)
    # 1 and 1.0 are the same JSON number; the dropped condition is a removal.
    assert diff.steps_changed == (StepChange("a", (FieldChange("/when", "removed", old="exists ${inputs.go}"),)),)
    flag = diff_definitions({"target": "x", "flag": 1}, {"target": "x", "flag": True})
    assert flag.fields_changed == (FieldChange("/flag", "changed", 1, True),)


def test_reordering_without_other_changes_is_reported() -> None:
    v2 = copy.deepcopy(V1)
    v2["steps"] = [v2["steps"][1], v2["steps"][0], v2["steps"][2]]
    diff = diff_definitions(V1, v2)
    assert diff.steps_reordered and not diff.steps_changed
    assert diff.summary == "The new version reorders steps."


def test_raw_definitions_are_matched_by_the_ids_the_model_would_generate() -> None:
    raw_old = SEED_REGISTRY_EXAMPLE["definition"]
    raw_new = copy.deepcopy(raw_old)
    raw_new["steps"][0]["image"] = "myapp:1.2.4"
    diff = diff_definitions(raw_old, raw_new)
    assert diff.steps_changed == (
        StepChange("build-container", (FieldChange("/image", "changed", "myapp:1.2.3", "myapp:1.2.4"),)),
    )
    assert diff.summary == 'The new version changes 1 step (build-container: image "myapp:1.2.3" → "myapp:1.2.4").'


def test_declaration_field_changes() -> None:
    old = {"target": "production", "version": "1.2.3", "environment": "azure-westus"}
    new = {"target": "production", "version": "1.3.0", "environment": "azure-westus"}
    diff = diff_definitions(old, new)
    assert diff.fields_changed == (FieldChange("/version", "changed", "1.2.3", "1.3.0"),)
    assert diff.summary == 'The new version changes version "1.2.3" → "1.3.0".'


def test_many_changes_to_one_step_are_abbreviated_and_the_diff_serializes() -> None:
    v2 = copy.deepcopy(V1)
    v2["steps"][0]["params"] = {"image": "b", "context": "./b", "target": "prod", "pull": True}
    diff = diff_definitions(V1, v2)
    assert len(diff.steps_changed[0].changes) == 4
    assert "; 1 more)" in diff.summary
    assert json.loads(json.dumps(diff.to_dict()))["steps_changed"][0]["id"] == "build-docker-image"
