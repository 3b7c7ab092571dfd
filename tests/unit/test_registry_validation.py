# intent_ref: platform.registry
"""Save-time validation: the seed's payloads pass; each rule fails at an exact pointer; plans and their hash."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.policy.facts import TenantFacts
from shared.registry.catalog import ModuleCatalog, ModuleSpec, builtin_catalog, seed_remote_modules
from shared.registry.model import Definition, ResolvedBlueprint
from shared.registry.plan import declaration_inputs, execution_levels, plan_hash
from shared.registry.validation import Limits, ValidationResult, required_blueprint, validate_definition
from tests.unit.test_registry_model import SEED_DECLARATION, SEED_DEPLOY_WEB_APP, SEED_REGISTRY_EXAMPLE

CATALOG = builtin_catalog().with_modules(seed_remote_modules())
BLUEPRINT = ResolvedBlueprint(
    "deploy-application",
    3,
    Definition.model_validate(
        {
            "inputs": {
                "type": "object",
                "properties": {
                    "target": {"type": "string"},
                    "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                    "environment": {"type": "string"},
                    "replicas": {"type": "integer", "minimum": 1, "default": 2},
                },
                "required": ["version", "environment"],
                "additionalProperties": False,
            },
            "steps": [
                {"id": "build", "action": "build-container", "image": "myapp:${inputs.version}"},
                {
                    "id": "deploy",
                    "action": "deploy-to-kubernetes",
                    "namespace": "${inputs.target}",
                    "replicas": "${inputs.replicas}",
                    "compensate": {
                        "action": "http.request",
                        "method": "POST",
                        "url": "https://deploy.example/rollback",
                    },
                },
                {"id": "verify", "action": "verify-deployment", "health_check": "/health"},
            ],
        }
    ),
)


def tenant(targets: set[str] | None = None, modules: set[str] | None = None) -> TenantFacts:
    everything = {
        "http",
        "build-container",
        "build-docker-image",
        "push-to-registry",
        "deploy-to-kubernetes",
        "verify-deployment",
        "wait",
        "event",
        "approval",
        "artifact",
        "intent",
    }
    return TenantFacts(
        uuid.uuid4(),
        "active",
        frozenset({"production", "staging"} if targets is None else targets),
        frozenset(everything if modules is None else modules),
    )


def validate(doc: dict[str, Any], **kwargs: Any) -> ValidationResult:
    return validate_definition(doc, catalog=kwargs.pop("catalog", CATALOG), **kwargs)


def errors(doc: dict[str, Any], **kwargs: Any) -> list[tuple[str, str]]:
    return [(error.pointer, error.code) for error in validate(doc, **kwargs).errors]


def intent(*steps: dict[str, Any], **definition: Any) -> dict[str, Any]:
    return {"name": "demo", "definition": {"target": "staging", **definition, "steps": list(steps)}}


def wait(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "wait", "seconds": 1, **extra}


# --- the seed ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [SEED_REGISTRY_EXAMPLE, SEED_DEPLOY_WEB_APP], ids=["registry-example", "example-1"])
def test_seed_payloads_with_steps_validate_as_written(doc: dict[str, Any]) -> None:
    result = validate(copy.deepcopy(doc), tenant=tenant())
    assert result.errors == ()
    assert result.plan is not None and len(result.plan) == 3
    assert all(len(level) == 1 for level in result.plan)


def test_seed_deploy_web_app_normalizes_and_plans_sequentially() -> None:
    result = validate(SEED_DEPLOY_WEB_APP)
    assert result.plan == [["build-docker-image"], ["push-to-registry"], ["deploy-to-kubernetes"]]
    assert result.normalized is not None
    assert result.normalized["steps"][2] == {
        "id": "deploy-to-kubernetes",
        "action": "deploy-to-kubernetes",
        "params": {"namespace": "production", "replicas": 3},
        "depends_on": ["push-to-registry"],
    }
    assert [step.step_id for step in result.steps] == ["build-docker-image", "push-to-registry", "deploy-to-kubernetes"]


def test_seed_declaration_validates_and_plans_through_its_blueprint() -> None:
    assert required_blueprint(SEED_DECLARATION) == "deploy-application"
    result = validate(copy.deepcopy(SEED_DECLARATION), blueprint=BLUEPRINT, tenant=tenant())
    assert result.errors == ()
    assert result.normalized == SEED_DECLARATION["definition"]
    assert result.plan == [["build"], ["deploy"], ["verify"]]
    assert result.blueprint_ref == "deploy-application@3"
    # Expanded steps keep their references; the declaration's fields (and the blueprint's defaults) bind them.
    assert result.steps[0].params == {"image": "myapp:${inputs.version}"}
    assert result.intent is not None
    assert declaration_inputs(result.intent.definition, BLUEPRINT) == {
        "replicas": 2,
        "target": "production",
        "version": "1.2.3",
        "environment": "azure-westus",
    }


def test_seed_declaration_without_its_blueprint_needs_one() -> None:
    assert errors(SEED_DECLARATION) == [("/definition", "blueprint_required")]


def test_required_blueprint_is_named_by_the_definition_else_by_the_intent() -> None:
    named = {"name": "web", "definition": {"blueprint": "deploy-application", "version": "1"}}
    assert required_blueprint(named) == "deploy-application"
    assert required_blueprint(SEED_DEPLOY_WEB_APP) is None
    assert required_blueprint({"name": "x"}) is None


# --- schema -----------------------------------------------------------------------------------------------------


def test_schema_errors_point_into_the_request_body() -> None:
    doc = {
        "name": "Not A Slug",
        "labels": {"Bad Key": "v", "team": 3},
        "extra": 1,
        "definition": {
            "target": "staging",
            "steps": [
                {"action": "wait", "seconds": 1, "retry": {"max_attempts": 0, "delay": 1}, "timeout_s": 0},
                {"action": "wait", "seconds": 1, "depends_on": "wait"},
                "not a step",
            ],
        },
    }
    assert errors(doc) == [
        ("/name", "string_pattern_mismatch"),
        ("/labels/Bad Key", "string_pattern_mismatch"),
        ("/labels/team", "string_type"),
        ("/extra", "extra_forbidden"),
        ("/definition/steps/0/retry/max_attempts", "greater_than_equal"),
        ("/definition/steps/0/retry/delay", "extra_forbidden"),
        ("/definition/steps/0/timeout_s", "greater_than_equal"),
        ("/definition/steps/1/depends_on", "list_type"),
        ("/definition/steps/2", "model_type"),
    ]


def test_missing_definition_and_non_object_body() -> None:
    assert errors({"name": "x"}) == [("/definition", "missing")]
    assert [(e.pointer, e.code) for e in validate_definition([], catalog=CATALOG).errors] == [  # type: ignore[arg-type]
        ("", "model_type")
    ]


def test_param_conflict_points_at_the_beside_key() -> None:
    doc = intent({"action": "wait", "seconds": 1, "params": {"seconds": 2}})
    assert errors(doc) == [("/definition/steps/0/seconds", "param_conflict")]


def test_retry_cap_below_the_initial_interval() -> None:
    doc = intent(wait("a", retry={"initial_interval_s": 5, "max_interval_s": 1}))
    assert errors(doc) == [("/definition/steps/0/retry/max_interval_s", "retry_interval")]
    doc = intent(wait("a", retry={"initial_interval_s": 1, "max_interval_s": 5}))
    assert errors(doc) == []


def test_invalid_when_is_reported_at_when() -> None:
    assert errors(intent(wait("a", when="${inputs.x} =="))) == [("/definition/steps/0/when", "invalid_when")]
    assert errors(intent(wait("a", when="${inputs.x} == 'y'"))) == []


def test_empty_steps_is_refused() -> None:
    assert errors(intent()) == [("/definition/steps", "too_short")]


def test_definition_fields_beside_steps_are_refused_and_a_blueprint_with_steps_too() -> None:
    doc = intent(wait("a"), version="1.2.3", blueprint="deploy-application")
    assert errors(doc) == [("/definition/version", "unknown_field"), ("/definition/blueprint", "blueprint_with_steps")]


def test_inputs_must_be_a_valid_object_schema() -> None:
    doc = intent(wait("a"), inputs={"type": "objekt", "properties": {"x": {"minLength": -1}}})
    assert errors(doc) == [
        ("/definition/inputs/type", "invalid_inputs_schema"),  # not a JSON Schema type…
        ("/definition/inputs/type", "invalid_inputs_schema"),  # …and inputs are an object anyway
        ("/definition/inputs/properties/x/minLength", "invalid_inputs_schema"),
    ]
    assert errors(intent(wait("a"), inputs={"type": "array"})) == [("/definition/inputs/type", "invalid_inputs_schema")]
    assert errors(intent(wait("a"), inputs={"type": "object", "properties": {"x": {"type": "string"}}})) == []


def test_input_schema_references_must_resolve_inside_the_schema() -> None:
    schema = {
        "type": "object",
        "$defs": {"v": {"type": "string"}},
        "properties": {
            "a": {"$ref": "#/$defs/v"},
            "b": {"$ref": "#/$defs/nope"},
            "c": {"$ref": "https://example.com/s.json"},
        },
    }
    assert errors(intent(wait("a"), inputs=schema)) == [
        ("/definition/inputs/properties/b/$ref", "invalid_inputs_schema"),
        ("/definition/inputs/properties/c/$ref", "invalid_inputs_schema"),
    ]


def test_a_blueprint_schema_with_a_remote_reference_is_reported_not_fetched() -> None:
    remote = ResolvedBlueprint(
        "deploy-application",
        1,
        Definition.model_validate(
            {
                "inputs": {"type": "object", "properties": {"v": {"$ref": "https://example.com/x.json"}}},
                "steps": [{"action": "wait", "seconds": 1}],
            }
        ),
    )
    result = validate(declaration(v=1), blueprint=remote)
    assert [(e.pointer, e.code) for e in result.errors] == [("/definition", "invalid_declaration")]
    assert "cannot be evaluated" in result.errors[0].message


# --- actions and parameters -------------------------------------------------------------------------------------


def test_unknown_action_with_a_suggestion() -> None:
    result = validate(intent(wait("a"), {"action": "deploy-to-kubernets", "namespace": "p"}))
    assert [(e.pointer, e.code) for e in result.errors] == [("/definition/steps/1/action", "unknown_action")]
    assert "did you mean 'deploy-to-kubernetes'" in result.errors[0].message


def test_params_are_checked_against_the_module_schema_where_they_were_written() -> None:
    doc = intent(
        {"action": "deploy-to-kubernetes", "replicas": "three"},  # beside action; namespace missing
        {"action": "deploy-to-kubernetes", "params": {"namespace": "Bad_NS", "replicas": -1}},
        {"action": "http.request", "url": "https://x", "verb": "GET", "method": "FETCH"},
    )
    assert errors(doc) == [
        ("/definition/steps/0", "invalid_params"),
        ("/definition/steps/0/replicas", "invalid_params"),
        ("/definition/steps/1/params/namespace", "invalid_params"),
        ("/definition/steps/1/params/replicas", "invalid_params"),
        ("/definition/steps/2/verb", "invalid_params"),
        ("/definition/steps/2/method", "invalid_params"),
    ]
    messages = [error.message for error in validate(doc).errors]
    assert messages[1] == "deploy-to-kubernetes: 'three' is not of type 'integer'"
    assert messages[3] == "deploy-to-kubernetes: -1 is less than the minimum of 0"
    assert messages[4] == "http.request: unexpected property 'verb'"


def test_a_missing_parameter_points_at_params_when_the_step_uses_params() -> None:
    assert errors(intent({"action": "push-to-registry", "params": {"image": "a"}})) == [
        ("/definition/steps/0/params", "invalid_params")
    ]


def test_module_defaults_satisfy_the_schema_and_alternatives_are_honoured() -> None:
    assert errors(intent({"action": "verify-deployment", "url": "https://app/health"})) == []
    [neither] = validate(intent({"action": "verify-deployment", "timeout": 5})).errors
    assert (neither.pointer, neither.message) == (
        "/definition/steps/0",
        "verify-deployment: one of 'url', 'health_check' is required",
    )
    [both] = validate(intent({"action": "wait", "seconds": 5, "until": "2030-01-01T00:00:00Z"})).errors
    assert (both.pointer, both.message) == (
        "/definition/steps/0",
        "wait: exactly one of 'seconds', 'until' is required",
    )


def test_parameters_holding_references_are_checked_at_run_time() -> None:
    doc = intent(
        {"action": "deploy-to-kubernetes", "namespace": "${inputs.ns}", "replicas": "${inputs.n}"},
        {"action": "http.request", "url": "${steps.deploy-to-kubernetes.output.url}/health"},
    )
    assert errors(doc) == []


def test_a_wait_until_must_be_an_rfc_3339_date_time_unless_it_is_a_reference() -> None:
    refused = ["tomorrow", "2030-01-01", "2030-13-01T00:00:00Z", " 2030-01-01T00:00:00Z", "2030-01-01T00:00:00+5"]
    for until in refused:
        assert errors(intent({"action": "wait", "until": until})) == [("/definition/steps/0/until", "invalid_params")]
    [problem] = validate(intent({"action": "wait", "params": {"until": "tomorrow"}})).errors
    assert problem.pointer == "/definition/steps/0/params/until"
    assert problem.message == (
        "wait: 'tomorrow' is not in the expected form: An RFC 3339 date-time such as 2030-01-01T09:00:00Z"
        " (without an offset it is UTC)."
    )
    # Without an offset it is UTC, as the engine has always read it: an intent saved with one still starts.
    # (Past times, which end at once: one more than the step's timeout away is refused, see below.)
    accepted = ["2020-01-01T00:00:00Z", "2020-01-01t00:00:00.25z", "2020-01-01T00:00:00+05:30", "2020-01-01T00:00:00"]
    accepted.append("${inputs.at}")
    for until in accepted:
        assert errors(intent({"action": "wait", "until": until})) == []
    # Seconds a timer cannot hold are refused too; a reference is checked when the step starts.
    assert errors(intent({"action": "wait", "seconds": 10**12})) == [("/definition/steps/0/seconds", "invalid_params")]
    assert errors(intent({"action": "wait", "seconds": "${inputs.s}"})) == []


def test_unknown_compensate_action_and_its_params() -> None:
    doc = intent(
        wait("a", compensate={"action": "http.rollback"}),
        wait("b", compensate={"action": "http.request", "url": "ftp://x"}),
    )
    assert errors(doc) == [
        ("/definition/steps/0/compensate/action", "unknown_action"),
        ("/definition/steps/1/compensate/url", "invalid_params"),
    ]
    assert errors(intent(wait("a", compensate={"action": "http.request", "params": {"url": "https://r"}}))) == []


# --- ids and dependencies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "params"),
    [("wait", {"seconds": 1}), ("approval", {}), ("intent.run", {"intent": "rollback"})],
)
def test_an_action_the_engine_carries_out_itself_cannot_compensate(action: str, params: dict[str, Any]) -> None:
    # Such a compensation saved, then failed at run time as an unknown module: the undo never ran.
    doc = intent(wait("a", compensate={"action": action, "params": params}))
    assert errors(doc) == [("/definition/steps/0/compensate/action", "unsupported_compensation")]
    assert errors(intent(wait("a", compensate={"action": "event.emit", "params": {"type": "undo"}}))) == []


def test_duplicate_ids() -> None:
    assert errors(intent(wait("a"), wait("b"), wait("a"))) == [("/definition/steps/2/id", "duplicate_id")]
    assert errors(intent(wait("a"), wait("b"), wait("c"))) == []


def test_unknown_and_duplicate_dependencies() -> None:
    result = validate(intent(wait("build"), wait("b", depends_on=["biuld", "build", "build"])))
    assert [(e.pointer, e.code) for e in result.errors] == [
        ("/definition/steps/1/depends_on/0", "unknown_dependency"),
        ("/definition/steps/1/depends_on/2", "duplicate_dependency"),
    ]
    assert "did you mean 'build'" in result.errors[0].message


def test_a_cycle_is_named_and_pointed_at_the_entry_that_closes_it() -> None:
    result = validate(intent(wait("a", depends_on=["c"]), wait("b", depends_on=["a"]), wait("c", depends_on=["b"])))
    assert [(e.pointer, e.code) for e in result.errors] == [("/definition/steps/0/depends_on/0", "cyclic_dependency")]
    assert result.errors[0].message == "dependency cycle: a → c → b → a (each step depends on the next)"


def test_a_cycle_through_implied_dependencies_points_at_the_explicit_one() -> None:
    # b and c follow their previous step; a waits for c: a ← b ← c ← a.
    result = validate(intent(wait("a", depends_on=["c"]), wait("b"), wait("c")))
    assert [(e.pointer, e.code) for e in result.errors] == [("/definition/steps/0/depends_on/0", "cyclic_dependency")]
    assert "a → c → b → a" in result.errors[0].message


def test_self_dependency_and_two_separate_cycles() -> None:
    doc = intent(
        wait("a", depends_on=["a"]), wait("b", depends_on=["c"]), wait("c", depends_on=["b"]), wait("d", depends_on=[])
    )
    result = validate(doc)
    assert [(e.pointer, e.code, e.message.split(": ")[1]) for e in result.errors] == [
        ("/definition/steps/0/depends_on/0", "cyclic_dependency", "a → a (each step depends on the next)"),
        ("/definition/steps/1/depends_on/0", "cyclic_dependency", "b → c → b (each step depends on the next)"),
    ]


def test_diamond_plans_in_three_levels() -> None:
    result = validate(
        intent(wait("a"), wait("b", depends_on=["a"]), wait("c", depends_on=["a"]), wait("d", depends_on=["b", "c"]))
    )
    assert result.errors == ()
    assert result.plan == [["a"], ["b", "c"], ["d"]]


def test_roots_run_together_and_levels_follow_the_longest_path() -> None:
    result = validate(
        intent(
            wait("a"),
            wait("b", depends_on=[]),
            wait("c", depends_on=["a"]),
            wait("d", depends_on=["b"]),
            wait("e", depends_on=["c", "b"]),
        )
    )
    assert result.plan == [["a", "b"], ["c", "d"], ["e"]]


# --- references -------------------------------------------------------------------------------------------------


def test_references_must_read_upstream_steps() -> None:
    doc = intent(
        {"id": "build", "action": "build-container", "image": "app", "depends_on": []},
        {"id": "other", "action": "build-container", "image": "x", "depends_on": []},
        {
            "id": "deploy",
            "action": "deploy-to-kubernetes",
            "namespace": "p",
            "depends_on": ["build"],
            "image": "${steps.other.output.image}",
            "when": "exists ${steps.verify.output}",
            "compensate": {
                "action": "http.request",
                "url": "https://r/${steps.deploy.output.release}",
                "body": {"image": "${steps.ghost.output}"},
            },
        },
        {"id": "verify", "action": "verify-deployment", "url": "${steps.build.output.url}"},  # transitively upstream
    )
    result = validate(doc)
    assert [(e.pointer, e.code) for e in result.errors] == [
        ("/definition/steps/2/image", "reference_not_upstream"),
        ("/definition/steps/2/when", "reference_not_upstream"),
        ("/definition/steps/2/compensate/body/image", "reference_unknown_step"),
    ]
    assert "not upstream of step 'deploy'" in result.errors[0].message


def test_a_step_cannot_read_its_own_output_but_its_compensation_can() -> None:
    assert errors(intent({"id": "a", "action": "http.request", "url": "https://${steps.a.output.host}"})) == [
        ("/definition/steps/0/url", "reference_not_upstream")
    ]
    assert (
        errors(
            intent(
                {
                    "id": "a",
                    "action": "http.request",
                    "url": "https://x",
                    "compensate": {"action": "http.request", "url": "https://${steps.a.output.host}"},
                }
            )
        )
        == []
    )


def test_inputs_must_be_declared_when_an_input_schema_is_given() -> None:
    steps = [{"action": "build-container", "image": "app:${inputs.version}", "params": {"tag": "${inputs.tagg}"}}]
    declared = {"type": "object", "properties": {"version": {"type": "string"}, "tag": {"type": "string"}}}
    result = validate(intent(*steps, inputs=declared))
    assert [(e.pointer, e.code) for e in result.errors] == [
        ("/definition/steps/0/params/tag", "reference_undeclared_input")
    ]
    assert "did you mean 'tag'" in result.errors[0].message
    assert errors(intent(*steps)) == []  # without a schema, inputs are whatever the execution passes


def test_malformed_references() -> None:
    assert errors(intent({"action": "build-container", "image": "app:${inputs.}"})) == [
        ("/definition/steps/0/image", "invalid_reference")
    ]


# --- limits -----------------------------------------------------------------------------------------------------


def test_size_limit() -> None:
    doc = intent(wait("a", when="exists ${inputs." + "x" * 300 + "}"))
    assert errors(doc, limits=Limits(max_definition_bytes=256)) == [("/definition", "too_large")]
    assert errors(doc, limits=Limits(max_definition_bytes=1024)) == []


def test_the_default_size_limit_is_256_kib() -> None:
    doc = intent(wait("a", compensate={"action": "event.emit", "type": "x", "data": {"blob": "x" * 256 * 1024}}))
    assert errors(doc) == [("/definition", "too_large")]


def test_step_count_limit() -> None:
    many = intent(*[wait(f"s{i}") for i in range(201)])
    assert errors(many) == [("/definition/steps", "too_many_steps")]
    assert errors(intent(*[wait(f"s{i}") for i in range(200)])) == []
    assert errors(intent(wait("a"), wait("b")), limits=Limits(max_steps=1)) == [("/definition/steps", "too_many_steps")]


def test_nesting_limit_points_at_the_first_container_too_deep() -> None:
    deep: Any = "bottom"
    for _ in range(40):
        deep = {"x": deep}
    doc = intent({"action": "event.emit", "type": "t", "data": deep})
    # definition(1) / steps(2) / 0(3) / data(4) / x…: the 33rd level is the 29th nested "x".
    assert errors(doc) == [("/definition/steps/0/data" + "/x" * 29, "too_deep")]
    assert errors(doc, limits=Limits(max_depth=64)) == []


# --- tenant gates -----------------------------------------------------------------------------------------------


def test_gates_point_at_each_offending_action_and_the_target() -> None:
    facts = tenant(targets={"staging"}, modules={"wait", "build-container"})
    doc = intent(
        wait("a"),
        {"action": "http.request", "url": "https://x"},
        wait("b", compensate={"action": "event.emit", "type": "rolled-back"}),
        target="production",
    )
    result = validate(doc, tenant=facts)
    assert [(e.pointer, e.code) for e in result.errors] == [
        ("/definition/target", "target_not_allowed"),
        ("/definition/steps/1/action", "module_not_allowed"),
        ("/definition/steps/2/compensate/action", "module_not_allowed"),
    ]
    assert result.errors[1].message == "module 'http' is not allowed for this tenant"
    allowed = tenant(targets={"production"}, modules={"wait", "http", "event"})
    assert errors(doc, tenant=allowed) == []


def test_gates_apply_to_a_declaration_and_its_blueprint_steps() -> None:
    facts = tenant(targets={"staging"}, modules={"build-container", "deploy-to-kubernetes", "verify-deployment"})
    assert errors(SEED_DECLARATION, blueprint=BLUEPRINT, tenant=facts) == [
        ("/definition", "module_not_allowed"),  # the blueprint's compensation calls http.request
        ("/definition/target", "target_not_allowed"),
    ]


# --- declarations -----------------------------------------------------------------------------------------------


def declaration(**fields: Any) -> dict[str, Any]:
    return {"name": "deploy-application", "definition": {"target": "production", **fields}}


def test_declaration_fields_are_checked_against_the_blueprint_inputs() -> None:
    doc = declaration(version="latest", region="westus", replicas=0)
    assert errors(doc, blueprint=BLUEPRINT) == [
        ("/definition", "invalid_declaration"),  # environment is required
        ("/definition/version", "invalid_declaration"),
        ("/definition/region", "invalid_declaration"),
        ("/definition/replicas", "invalid_declaration"),
    ]


def test_declaration_naming_its_blueprint() -> None:
    named = {
        "name": "web",
        "definition": {"blueprint": "deploy-application", "target": "staging", "version": "1.0.0", "environment": "x"},
    }
    assert errors(named, blueprint=BLUEPRINT) == []
    assert errors(named) == [("/definition/blueprint", "blueprint_required")]
    other = ResolvedBlueprint("other", 1, BLUEPRINT.definition)
    assert errors(named, blueprint=other) == [("/definition/blueprint", "blueprint_mismatch")]


def test_declaration_must_set_every_input_the_blueprint_reads_without_a_default() -> None:
    loose = ResolvedBlueprint(
        "deploy-application",
        1,
        Definition.model_validate({"steps": [{"action": "build-container", "image": "${inputs.image}"}]}),
    )
    result = validate(declaration(), blueprint=loose)
    assert [(e.pointer, e.code) for e in result.errors] == [("/definition", "missing_input")]
    assert "'image'" in result.errors[0].message
    assert errors(declaration(image="app:1"), blueprint=loose) == []


def test_declaration_cannot_carry_an_input_schema() -> None:
    doc = declaration(version="1.0.0", environment="x", inputs={"type": "object"})
    assert errors(doc, blueprint=BLUEPRINT) == [("/definition/inputs", "unexpected_field")]


def test_blueprint_actions_must_be_in_the_catalog() -> None:
    narrow = ModuleCatalog([spec for spec in CATALOG.values() if spec.action != "verify-deployment"])
    doc = declaration(version="1.0.0", environment="x")
    assert errors(doc, blueprint=BLUEPRINT, catalog=narrow) == [("/definition", "unknown_action")]


def test_a_blueprint_without_steps_cannot_expand_a_declaration() -> None:
    empty = ResolvedBlueprint("deploy-application", 1, Definition.model_validate({"target": "x"}))
    assert errors(declaration(), blueprint=empty) == [("/definition", "blueprint_invalid")]


def test_a_url_a_blueprint_builds_from_declared_inputs_alone_must_be_public() -> None:
    # The value is known when the declaration is saved, as a literal URL in a step is: refused then, not at run time.
    probe = ResolvedBlueprint(
        "probe",
        1,
        Definition.model_validate(
            {
                "inputs": {"properties": {"host": {"type": "string"}, "port": {"default": 80}}},
                "steps": [
                    {"id": "call", "action": "http.request", "url": "http://${inputs.host}:${inputs.port}/status"},
                    {"id": "health", "action": "http.wait_healthy", "url": "${steps.call.output.body.next}"},
                    {
                        "id": "note",
                        "action": "wait",
                        "seconds": 0,
                        "compensate": {"action": "http.request", "url": "${inputs.callback}", "method": "POST"},
                    },
                ],
            }
        ),
    )

    def declared(**fields: Any) -> list[tuple[str, str]]:
        return errors(
            {"name": "p", "definition": {"blueprint": "probe", **fields}}, blueprint=probe, allow_private=False
        )

    public = {"host": "example.com", "callback": "https://hooks.example.com/x"}
    assert declared(**public) == []
    assert declared(**{**public, "host": "169.254.169.254"}) == [("/definition/host", "url_not_public")]
    assert declared(**{**public, "host": "10.0.0.7", "port": 8080}) == [
        ("/definition/host", "url_not_public"),  # each declared input the address is built from is named
        ("/definition/port", "url_not_public"),
    ]
    assert declared(**{**public, "callback": "http://127.0.0.1/hook"}) == [("/definition/callback", "url_not_public")]
    message = (
        validate(
            {"name": "p", "definition": {"blueprint": "probe", **public, "host": "127.0.0.1"}},
            blueprint=probe,
            allow_private=False,
        )
        .errors[0]
        .message
    )
    assert "blueprint step 'call' builds its url from the declaration's inputs" in message
    # An address from the blueprint's own default is refused where the declaration names its blueprint.
    defaulted = ResolvedBlueprint(
        "probe",
        2,
        Definition.model_validate(
            {
                "inputs": {"properties": {"endpoint": {"type": "string", "default": "http://10.1.1.1/"}}},
                "steps": [{"id": "call", "action": "http.request", "url": "${inputs.endpoint}"}],
            }
        ),
    )
    on_default = {"name": "p", "definition": {"blueprint": "probe"}}
    assert errors(on_default, blueprint=defaulted, allow_private=False) == [("/definition/blueprint", "url_not_public")]
    on_default["definition"]["endpoint"] = "https://status.example.com/"
    assert errors(on_default, blueprint=defaulted, allow_private=False) == []
    # Where private networks are open (local development), the same declaration saves.
    private = {"name": "p", "definition": {"blueprint": "probe", **public, "host": "10.0.0.7"}}
    assert errors(private, blueprint=probe, allow_private=True) == []


# --- everything at once, and the plan hash ---------------------------------------------------------------------


def test_four_different_problems_are_reported_together() -> None:
    doc = intent(
        wait("a", retry={"max_attempts": 0}),  # schema
        {"id": "b", "action": "teleport"},  # unknown action
        wait("c", depends_on=["zzz"]),  # unknown dependency
        {"id": "d", "action": "build-container", "image": "${steps.e.output.tag}"},  # not upstream
        wait("e"),
    )
    assert errors(doc) == [
        ("/definition/steps/0/retry/max_attempts", "greater_than_equal"),
        ("/definition/steps/1/action", "unknown_action"),
        ("/definition/steps/2/depends_on/0", "unknown_dependency"),
        ("/definition/steps/3/image", "reference_not_upstream"),
    ]


def test_plan_hash_is_stable_and_covers_definition_and_blueprint() -> None:
    result = validate(SEED_DEPLOY_WEB_APP)
    assert result.normalized is not None
    again = validate(copy.deepcopy(SEED_DEPLOY_WEB_APP)).normalized
    assert again is not None
    first = plan_hash(result.normalized, None)
    assert first == plan_hash(again, None) and len(first) == 64
    assert plan_hash(result.normalized, "bp@1") != first
    changed = copy.deepcopy(result.normalized)
    changed["steps"][2]["params"]["replicas"] = 4
    assert plan_hash(changed, None) != first


def test_normalized_definitions_validate_to_themselves() -> None:
    result = validate(SEED_REGISTRY_EXAMPLE)
    assert result.normalized is not None
    again = validate({"name": "deploy-application", "definition": result.normalized})
    assert again.normalized == result.normalized and again.plan == result.plan


# --- property: every accepted definition plans soundly ---------------------------------------------------------


@st.composite
def dag_definitions(draw: st.DrawFn) -> dict[str, Any]:
    """Steps in list order, some with ids; each depends on nothing, on the previous (absent), or on earlier named
    steps — and sometimes on a later one, which may close a cycle that the validator must catch."""
    count = draw(st.integers(1, 12))
    steps: list[dict[str, Any]] = []
    named: list[str] = []
    for index in range(count):
        step: dict[str, Any] = {"action": draw(st.sampled_from(["wait", "event.emit"]))}
        params: dict[str, Any] = {"seconds": 1} if step["action"] == "wait" else {"type": "t"}
        step.update(params)
        if draw(st.booleans()):
            step["id"] = f"s{index}"
        mode = draw(st.sampled_from(["absent", "root", "earlier", "forward"]))
        if mode == "root":
            step["depends_on"] = []
        elif mode == "earlier" and named:
            step["depends_on"] = draw(st.lists(st.sampled_from(named), unique=True, max_size=3))
        elif mode == "forward" and index + 1 < count:
            step["depends_on"] = [f"s{draw(st.integers(index + 1, count - 1))}"]
        if "id" in step:
            named.append(step["id"])
        steps.append(step)
    return {"name": "prop", "definition": {"target": "staging", "steps": steps}}


@settings(max_examples=300, deadline=None)
@given(dag_definitions())
def test_accepted_definitions_plan_every_step_once_after_its_dependencies(doc: dict[str, Any]) -> None:
    result = validate(doc)
    forward = any(
        dep.startswith("s") and int(dep[1:]) > index
        for index, step in enumerate(doc["definition"]["steps"])
        for dep in step.get("depends_on", [])
    )
    if not result.ok:
        # Only a forward dependency can be refused: to a step without that id, or closing a cycle.
        assert forward
        assert {error.code for error in result.errors} <= {"unknown_dependency", "cyclic_dependency"}
        return
    assert result.plan is not None and result.normalized is not None
    placed = [step_id for level in result.plan for step_id in level]
    ids = [step["id"] for step in result.normalized["steps"]]
    assert sorted(placed) == sorted(ids) and len(set(placed)) == len(placed)
    level_of = {step_id: n for n, level in enumerate(result.plan) for step_id in level}
    for step in result.normalized["steps"]:
        assert all(level_of[dep] < level_of[step["id"]] for dep in step["depends_on"])
        # Each step sits right after its deepest dependency: levels are as shallow as possible.
        assert level_of[step["id"]] == 1 + max((level_of[dep] for dep in step["depends_on"]), default=-1)
    assert execution_levels(result.steps) == result.plan
    assert validate({"name": "prop", "definition": result.normalized}).normalized == result.normalized


def test_module_specs_refuse_broken_schemas_and_names() -> None:
    with pytest.raises(Exception, match="is not valid"):
        ModuleSpec("x.y", "broken", {"type": "nonsense"})
    with pytest.raises(ValueError, match="not a valid action name"):
        ModuleSpec("bad name", "x", {"type": "object"})
    with pytest.raises(ValueError, match="twice"):
        builtin_catalog().with_modules([ModuleSpec("wait", "shadow", {"type": "object"})])


# --- an intent that runs itself ----------------------------------------------------------------------------------


def test_an_intent_run_step_naming_the_intent_being_saved_is_refused_where_it_names_it() -> None:
    # The reviewer's `rv-self`: saved 201, and refused only when it ran.
    itself = {"id": "again", "action": "intent.run", "intent": "demo"}
    in_params = {"id": "nested", "action": "intent.run", "params": {"intent": "demo"}}
    doc = intent(wait("first"), itself, in_params)
    found = [(e.pointer, e.code) for e in validate(doc, runs_as=doc["name"]).errors]
    assert found == [
        ("/definition/steps/1/intent", "recursive_intent"),
        ("/definition/steps/2/params/intent", "recursive_intent"),
    ]
    result = validate(intent(itself), runs_as="demo")
    assert result.errors[0].message == (
        "the step runs intent 'demo', the intent being saved: an intent cannot run itself"
    )
    # Saved as a blueprint (no name it runs as), the same steps run another thing: no refusal.
    assert validate(intent(itself)).ok


def test_an_intent_run_of_another_intent_or_of_a_built_name_is_left_to_run_time() -> None:
    # Another intent, and a name built from an input (whose value only a run knows), save as before.
    other = {"id": "other", "action": "intent.run", "intent": "demo-child"}
    built = {"id": "built", "action": "intent.run", "intent": "${inputs.which}"}
    assert validate(intent(other, built)).ok
