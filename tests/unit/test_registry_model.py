# intent_ref: platform.registry
"""The definition model: the seed's payloads, parameter normalisation, step ids, `when` and references."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from pydantic import ValidationError

from shared.registry.model import Definition, IntentDefinitionIn, RetryPolicy, Step, assign_step_ids
from shared.registry.references import (
    Reference,
    ReferenceSyntaxError,
    UnresolvedReferenceError,
    parse_template,
    resolve,
    scan_references,
)
from shared.registry.when import And, Compare, Exists, In, Not, Or, WhenSyntaxError, evaluate_when, parse_when

# The seed tutorial's payloads (../shared/seeds/002_*.txt), verbatim.
SEED_DECLARATION: dict[str, Any] = {
    "name": "deploy-application",
    "definition": {"target": "production", "version": "1.2.3", "environment": "azure-westus"},
}
SEED_REGISTRY_EXAMPLE: dict[str, Any] = {
    "id": "deploy-application-v1",
    "name": "deploy-application",
    "version": 1,
    "tenant_id": "tenant-123",
    "definition": {
        "target": "production",
        "steps": [
            {"action": "build-container", "image": "myapp:1.2.3"},
            {"action": "deploy-to-kubernetes", "namespace": "production"},
            {"action": "verify-deployment", "health_check": "/health"},
        ],
    },
    "status": "active",
    "created_at": "2024-01-04T10:00:00Z",
}
SEED_DEPLOY_WEB_APP: dict[str, Any] = {
    "name": "deploy-web-app",
    "definition": {
        "target": "production",
        "steps": [
            {"action": "build-docker-image", "image": "myapp:latest", "context": "./app"},
            {"action": "push-to-registry", "registry": "azurecr.io", "image": "myapp:latest"},
            {"action": "deploy-to-kubernetes", "namespace": "production", "replicas": 3},
        ],
    },
}


def steps_of(doc: dict[str, Any]) -> list[Step]:
    steps = IntentDefinitionIn.model_validate(doc).definition.steps
    assert steps is not None
    return steps


# --- the seed ---------------------------------------------------------------------------------------------------


def test_seed_registry_example_parses_with_generated_ids_sequential_order_and_params() -> None:
    intent = IntentDefinitionIn.model_validate(SEED_REGISTRY_EXAMPLE)
    assert intent.name == "deploy-application"
    assert intent.definition.to_document() == {
        "target": "production",
        "steps": [
            {
                "id": "build-container",
                "action": "build-container",
                "params": {"image": "myapp:1.2.3"},
                "depends_on": [],
            },
            {
                "id": "deploy-to-kubernetes",
                "action": "deploy-to-kubernetes",
                "params": {"namespace": "production"},
                "depends_on": ["build-container"],
            },
            {
                "id": "verify-deployment",
                "action": "verify-deployment",
                "params": {"health_check": "/health"},
                "depends_on": ["deploy-to-kubernetes"],
            },
        ],
    }


def test_seed_deploy_web_app_parses() -> None:
    steps = steps_of(SEED_DEPLOY_WEB_APP)
    assert [step.params for step in steps] == [
        {"image": "myapp:latest", "context": "./app"},
        {"registry": "azurecr.io", "image": "myapp:latest"},
        {"namespace": "production", "replicas": 3},
    ]


def test_seed_declaration_parses_as_a_declaration_with_its_fields_as_state() -> None:
    definition = IntentDefinitionIn.model_validate(SEED_DECLARATION).definition
    assert definition.is_declaration
    assert definition.declared_state() == {"target": "production", "version": "1.2.3", "environment": "azure-westus"}
    assert definition.to_document() == SEED_DECLARATION["definition"]


def test_read_only_fields_of_a_stored_intent_are_ignored_but_other_unknown_fields_are_refused() -> None:
    assert IntentDefinitionIn.model_validate(SEED_REGISTRY_EXAMPLE).model_dump().keys() == {
        "name",
        "description",
        "labels",
        "definition",
    }
    with pytest.raises(ValidationError) as caught:
        IntentDefinitionIn.model_validate({**SEED_DEPLOY_WEB_APP, "owner": "me"})
    assert [error["loc"] for error in caught.value.errors()] == [("owner",)]


# --- parameters -------------------------------------------------------------------------------------------------


def test_params_beside_action_and_in_params_are_merged() -> None:
    step = Step.model_validate({"action": "http.request", "url": "https://x", "params": {"method": "POST"}})
    assert step.params == {"method": "POST", "url": "https://x"}


def test_a_parameter_in_both_places_is_refused_at_the_beside_key() -> None:
    with pytest.raises(ValidationError) as caught:
        Step.model_validate({"action": "http.request", "url": "https://a", "params": {"url": "https://b"}})
    [error] = caught.value.errors()
    assert error["type"] == "param_conflict"
    assert error["ctx"] == {"name": "url", "at": "url"}


def test_compensation_takes_parameters_beside_its_action_too() -> None:
    step = Step.model_validate(
        {
            "action": "deploy-to-kubernetes",
            "namespace": "p",
            "compensate": {"action": "http.request", "method": "POST", "url": "https://r"},
        }
    )
    assert step.compensate is not None
    assert step.compensate.params == {"method": "POST", "url": "https://r"}


def test_non_object_params_is_a_type_error_without_noise_from_beside_keys() -> None:
    with pytest.raises(ValidationError) as caught:
        Step.model_validate({"action": "x", "params": [1], "image": "a"})
    assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [(("params",), "dict_type")]


# --- ids and dependencies ---------------------------------------------------------------------------------------


def test_generated_ids_are_action_slugs_numbered_from_the_second_occurrence() -> None:
    assert assign_step_ids(
        [(None, "build-container"), (None, "build-container"), (None, "http.request"), (None, "build-container")]
    ) == ["build-container", "build-container-2", "http-request", "build-container-3"]


def test_generated_ids_skip_every_explicit_id_wherever_it_appears() -> None:
    assert assign_step_ids([(None, "build"), (None, "build"), ("build-2", "x"), ("build", "y")]) == [
        "build-3",
        "build-4",
        "build-2",
        "build",
    ]


def test_ids_are_stable_across_versions_of_the_same_definition() -> None:
    first = [step.id for step in steps_of(SEED_DEPLOY_WEB_APP)]
    again = [step.id for step in steps_of(copy.deepcopy(SEED_DEPLOY_WEB_APP))]
    extended = copy.deepcopy(SEED_DEPLOY_WEB_APP)
    extended["definition"]["steps"].append({"action": "deploy-to-kubernetes", "namespace": "staging"})
    grown = [step.id for step in steps_of(extended)]
    assert first == again == ["build-docker-image", "push-to-registry", "deploy-to-kubernetes"]
    assert grown == [*first, "deploy-to-kubernetes-2"]


def test_absent_depends_on_is_the_previous_step_and_an_empty_list_is_a_root() -> None:
    steps = steps_of(
        {
            "name": "x",
            "definition": {
                "steps": [
                    {"id": "a", "action": "wait"},
                    {"id": "b", "action": "wait"},
                    {"id": "c", "action": "wait", "depends_on": []},
                    {"id": "d", "action": "wait", "depends_on": ["a", "c"]},
                ]
            },
        }
    )
    assert [step.depends_on for step in steps] == [[], ["a"], [], ["a", "c"]]


def test_normalization_is_idempotent() -> None:
    once = IntentDefinitionIn.model_validate(SEED_REGISTRY_EXAMPLE).definition.to_document()
    assert Definition.model_validate(once).to_document() == once


def test_retry_policy_backoff_and_its_cap() -> None:
    retry = RetryPolicy.model_validate({"max_attempts": 5, "initial_interval_s": 2, "backoff": 3, "max_interval_s": 10})
    assert [retry.delay_before(attempt) for attempt in (2, 3, 4, 5)] == [2, 6, 10, 10]
    with pytest.raises(ValidationError) as caught:
        RetryPolicy.model_validate({"initial_interval_s": 5, "max_interval_s": 1})
    assert caught.value.errors()[0]["type"] == "retry_interval"


def test_strict_types_refuse_coercion() -> None:
    with pytest.raises(ValidationError) as caught:
        Step.model_validate({"action": "wait", "timeout_s": "600"})
    assert [e["loc"] for e in caught.value.errors()] == [("timeout_s",)]


# --- when -------------------------------------------------------------------------------------------------------

ENV = Reference("inputs", "env")
OK = Reference("steps", "check", ("ok",))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${inputs.env} == 'prod'", Compare(ENV, "==", "prod")),
        ('${inputs.env} != "prod"', Compare(ENV, "!=", "prod")),
        ("${inputs.env} in ['a', \"b\", 3, true, null]", In(ENV, ("a", "b", 3, True, None))),
        ("${inputs.env} in []", In(ENV, ())),
        ("exists ${steps.check.output.ok}", Exists(OK)),
        ("not exists ${inputs.env}", Not(Exists(ENV))),
        (
            "exists ${inputs.env} and ${steps.check.output.ok} == true or ${inputs.env} == 1.5",
            Or((And((Exists(ENV), Compare(OK, "==", True))), Compare(ENV, "==", 1.5))),
        ),
        (
            "exists ${inputs.env} and (${steps.check.output.ok} == true or ${inputs.env} == -2)",
            And((Exists(ENV), Or((Compare(OK, "==", True), Compare(ENV, "==", -2))))),
        ),
        ("${inputs.env} == 'it\\'s'", Compare(ENV, "==", "it's")),
    ],
)
def test_when_grammar(text: str, expected: object) -> None:
    assert parse_when(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("${inputs.env} ==", "expected a literal at the end"),
        ("${inputs.env} = 'a'", "unexpected character '='"),
        ("env == 'a'", "unknown word 'env'"),
        ("${input.env} == 'a'", "is not a reference"),
        ("${inputs.env} == 'a' and", "expected 'not' or '(' or 'exists' or a reference at the end"),
        ("(${inputs.env} == 'a'", "expected ')'"),
        ("${inputs.env} == 'a' 'b'", "unexpected"),
        ("${inputs.env} in ['a' 'b']", "expected ',' or ']'"),
        ("not " * 40 + "exists ${inputs.env}", "deeper than 32"),
    ],
)
def test_when_syntax_errors_say_what_and_where(text: str, message: str) -> None:
    with pytest.raises(WhenSyntaxError, match=re.escape(message)):
        parse_when(text)


@pytest.mark.parametrize(
    ("opening", "closing", "levels"),
    [("(", ")", 32), ("not (", ")", 16), ("not ", "", 32)],  # a `not` and a parenthesis are a level each
)
def test_a_condition_nests_32_levels_and_no_more(opening: str, closing: str, levels: int) -> None:
    leaf = "${inputs.env} == 'a'"
    parsed = parse_when(opening * levels + leaf + closing * levels)
    assert parsed is not None
    with pytest.raises(WhenSyntaxError, match=re.escape("deeper than 32")):
        parse_when(opening * levels + "(" + leaf + ")" + closing * levels)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${inputs.env} == 'prod'", True),
        ("${inputs.env} != 'prod'", False),
        ("${inputs.count} == 2.0", True),
        ("${inputs.flag} == 1", False),  # JSON equality: true is not 1
        ("${inputs.flag} == true", True),
        ("${inputs.env} in ['dev', 'prod']", True),
        ("${inputs.missing} == null", False),  # an absent reference equals nothing…
        ("${inputs.missing} != 'x'", True),  # …so it differs from everything
        ("${inputs.nothing} == null", True),
        ("exists ${inputs.nothing}", True),  # a present null exists
        ("exists ${inputs.missing}", False),
        ("${steps.check.output.ok} == true and ${steps.check.output.items.1} == 'b'", True),
        ("exists ${steps.skipped.output}", False),
        ("not (${inputs.env} == 'dev' or ${inputs.env} == 'test')", True),
    ],
)
def test_evaluate_when(text: str, expected: bool) -> None:
    inputs = {"env": "prod", "count": 2, "flag": True, "nothing": None}
    outputs = {"check": {"ok": True, "items": ["a", "b"]}}
    assert evaluate_when(text, inputs, outputs) is expected
    assert evaluate_when(parse_when(text), inputs, outputs) is expected


def test_an_invalid_when_is_refused_when_the_step_is_parsed() -> None:
    with pytest.raises(ValidationError) as caught:
        Step.model_validate({"action": "wait", "when": "${inputs.x} =="})
    [error] = caught.value.errors()
    assert (error["loc"], error["type"]) == (("when",), "invalid_when")


# --- references -------------------------------------------------------------------------------------------------


def test_templates_split_into_text_and_references() -> None:
    assert parse_template("myapp:${inputs.version}-${steps.build.output.tag.0}") == [
        "myapp:",
        Reference("inputs", "version"),
        "-",
        Reference("steps", "build", ("tag", "0")),
    ]
    assert parse_template("echo ${HOME} costs $5") == ["echo ${HOME} costs $5"]  # not ours: literal
    assert parse_template("literal $${inputs.x}") == ["literal ${inputs.x}"]  # the escape


@pytest.mark.parametrize(
    "text",
    [
        "${inputs}",
        "${inputs.}",
        "${steps.build}",
        "${steps.build.outputs.x}",
        "${steps.a b.output}",
        "${inputs.x",
    ],
)
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(ReferenceSyntaxError):
        parse_template(text)


def test_scan_finds_references_in_nested_params_with_their_paths() -> None:
    scan = scan_references(
        {"a": "${inputs.x}", "b": [{"c": "x ${steps.s.output.y}"}, 3], "${inputs.k}": "v", "d": "${inputs.}"}
    )
    assert scan.found == [(("a",), Reference("inputs", "x")), (("b", 0, "c"), Reference("steps", "s", ("y",)))]
    assert [path for path, _ in scan.errors] == [("d",)]


def test_resolve_keeps_types_for_whole_references_and_stringifies_embedded_ones() -> None:
    inputs = {"replicas": 3, "tags": ["a", "b"], "name": "web", "flag": False}
    outputs = {"build": {"image": {"digest": "sha256:1"}, "sizes": [10, 20]}}
    value = {
        "replicas": "${inputs.replicas}",
        "tags": "${inputs.tags}",
        "label": "${inputs.name}-${inputs.replicas}-${inputs.flag}",
        "digest": "${steps.build.output.image.digest}",
        "second": "${steps.build.output.sizes.1}",
        "nested": [{"all": "${steps.build.output}"}, "plain", 7],
    }
    assert resolve(value, inputs, outputs) == {
        "replicas": 3,
        "tags": ["a", "b"],
        "label": "web-3-false",
        "digest": "sha256:1",
        "second": 20,
        "nested": [{"all": {"image": {"digest": "sha256:1"}, "sizes": [10, 20]}}, "plain", 7],
    }


def test_resolved_values_do_not_alias_the_outputs() -> None:
    outputs = {"build": {"tags": ["a"]}}
    resolved = resolve("${steps.build.output.tags}", {}, outputs)
    resolved.append("b")
    assert outputs == {"build": {"tags": ["a"]}}


@pytest.mark.parametrize(
    "text", ["${inputs.absent}", "${steps.build.output.nope}", "${steps.other.output}", "${steps.build.output.sizes.5}"]
)
def test_unresolved_references_raise(text: str) -> None:
    with pytest.raises(UnresolvedReferenceError):
        resolve(text, {}, {"build": {"sizes": [1]}})
