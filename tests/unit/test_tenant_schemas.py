# intent_ref: platform.registry
"""Tenant-supplied JSON Schemas: regexes run on RE2 (no catastrophic backtracking); unenforceable ones are refused.

With Python's `re`, the catastrophic cases below would not return within the test run: they pass only because
the patterns are evaluated in linear time.
"""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from shared.engine.start import _input_problems
from shared.registry.catalog import builtin_catalog
from shared.registry.modules import ModuleRegistration
from shared.registry.problems import from_schema, pointer
from shared.registry.schemas import MAX_PATTERN_LENGTH, matches, pattern_problems, tenant_validator
from shared.registry.validation import validate_definition
from tests.unit.test_registry_validation import CATALOG

CATASTROPHIC = "^(a+)+$"
HOSTILE = "a" * 50 + "!"
UNSUPPORTED = [r"(a)\1", "(?=a)b", "(?!a)b", "(?<=a)b", "(?<!a)b", r"a\Z"]


def _messages(schema: dict[str, Any], instance: Any) -> list[tuple[list[Any], str]]:
    return [(list(e.absolute_path), e.message) for e in tenant_validator(schema).iter_errors(instance)]


# ---- evaluation -------------------------------------------------------------------------------------------------


def test_a_catastrophic_pattern_fails_promptly_naming_the_field() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": CATASTROPHIC}}}
    assert _messages(schema, {"name": HOSTILE}) == [(["name"], f"{HOSTILE!r} does not match {CATASTROPHIC!r}")]
    assert _messages(schema, {"name": "aaaa"}) == []


def test_execute_time_input_validation_uses_the_linear_engine() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": CATASTROPHIC}}}
    problems = _input_problems(schema, {"name": HOSTILE})
    assert [problem["pointer"] for problem in problems] == ["/input/name"]
    assert "does not match" in problems[0]["detail"]
    assert _input_problems(schema, {"name": "a" * 10_000}) == []


def test_catastrophic_pattern_properties_are_evaluated_promptly() -> None:
    closed = {"type": "object", "patternProperties": {CATASTROPHIC: {"type": "integer"}}, "additionalProperties": False}
    assert _messages(closed, {"aaa": "x", HOSTILE: 1}) == [
        (["aaa"], "'x' is not of type 'integer'"),
        ([], f"{HOSTILE!r} does not match any of the regexes: {CATASTROPHIC!r}"),
    ]
    unevaluated = {"type": "object", "patternProperties": {CATASTROPHIC: {}}, "unevaluatedProperties": False}
    assert _messages(unevaluated, {"aaa": 1, HOSTILE: 1}) == [
        ([], f"Unevaluated properties are not allowed ({HOSTILE!r} was unexpected)")
    ]
    assert _messages(unevaluated, {"aaa": 1}) == []


def test_the_registry_locates_an_unexpected_key_with_the_linear_engine() -> None:
    schema = {"type": "object", "patternProperties": {CATASTROPHIC: {}}, "additionalProperties": False}
    problems = from_schema(schema, {HOSTILE: 1, "aa": 2}, lambda path: pointer("params", *path), code="c", subject="m")
    assert [(p.pointer, p.message) for p in problems] == [
        (pointer("params", HOSTILE), f"m: unexpected property '{HOSTILE}'")
    ]


def test_ordinary_schemas_keep_their_meaning() -> None:
    schema = {
        "type": "object",
        "required": ["version"],
        "additionalProperties": False,
        "properties": {"version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"}},
        "patternProperties": {"^x-": {"type": "string"}},
        "$defs": {"tag": {"type": "string", "pattern": "^[a-z]+$"}},
    }
    assert _messages(schema, {"version": "1.2.3", "x-note": "ok"}) == []
    assert sorted(path for path, _ in _messages(schema, {"version": "1.2", "x-note": 3, "other": 1})) == [
        [],
        ["version"],
        ["x-note"],
    ]
    refs = {
        "type": "object",
        "properties": {"t": {"$ref": "#/$defs/tag"}},
        "unevaluatedProperties": False,
        "$defs": {"tag": {"type": "string", "pattern": "^[a-z]+$"}},
    }
    assert _messages(refs, {"t": "abc"}) == []
    assert sorted(path for path, _ in _messages(refs, {"t": "ABC", "u": 1})) == [[], ["t"]]
    assert matches("b", "abc") and not matches("^b", "abc")  # unanchored, like ECMA-262


@pytest.mark.parametrize("pattern", UNSUPPORTED)
def test_a_stored_unenforceable_pattern_refuses_instead_of_passing(pattern: str) -> None:
    # A schema saved before this rule: its pattern is reported, never silently skipped.
    schema = {"type": "object", "properties": {"v": {"type": "string", "pattern": pattern}}}
    assert _messages(schema, {"v": "ab"}) == [(["v"], f"the pattern {pattern!r} cannot be evaluated")]
    assert not matches(pattern, "ab")


# ---- registration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", UNSUPPORTED)
def test_pattern_problems_name_the_location(pattern: str) -> None:
    schema = {
        "type": "object",
        "properties": {"v": {"type": "string", "pattern": pattern}},
        "patternProperties": {pattern: {}},
    }
    found = pattern_problems(schema)
    assert [path for path, _ in found] == [("patternProperties", pattern), ("properties", "v", "pattern")]
    assert all(repr(pattern) in message for _, message in found)


def test_pattern_problems_skip_data_and_property_names() -> None:
    schema = {
        "type": "object",
        "properties": {"pattern": {"type": "string"}},
        "enum": [{"pattern": "(?=x)"}],
        "examples": [{"pattern": r"(a)\1"}],
        "default": {"pattern": "(?=y)"},
    }
    assert pattern_problems(schema) == []
    assert pattern_problems({"pattern": "a" * (MAX_PATTERN_LENGTH + 1)})


def test_an_intent_inputs_schema_with_lookaround_is_refused() -> None:
    doc = {
        "name": "lookaround",
        "definition": {
            "target": "staging",
            "steps": [{"id": "w", "action": "wait", "seconds": 1}],
            "inputs": {"type": "object", "properties": {"name": {"type": "string", "pattern": "^(?!admin)"}}},
        },
    }
    result = validate_definition(doc, catalog=CATALOG)
    assert [(e.pointer, e.code) for e in result.errors] == [
        ("/definition/inputs/properties/name/pattern", "invalid_inputs_schema")
    ]
    doc["definition"]["inputs"]["properties"]["name"]["pattern"] = CATASTROPHIC
    assert validate_definition(doc, catalog=CATALOG).ok  # catastrophic for `re`, harmless here: accepted


def test_a_module_parameter_schema_with_a_backreference_is_refused() -> None:
    schema = {"type": "object", "properties": {"tag": {"type": "string", "pattern": r"^(\w+)-\1$"}}}
    with pytest.raises(pydantic.ValidationError) as refused:
        ModuleRegistration(action="tagger", params_schema=schema)
    assert [error["loc"] for error in refused.value.errors()] == [("params_schema", "properties", "tag", "pattern")]
    assert ModuleRegistration(
        action="tagger", params_schema={**schema, "properties": {"tag": {"type": "string", "pattern": CATASTROPHIC}}}
    ).params_schema


def test_module_defaults_are_checked_with_the_linear_engine() -> None:
    schema = {"type": "object", "properties": {"tag": {"type": "string", "pattern": CATASTROPHIC}}}
    with pytest.raises(pydantic.ValidationError) as refused:
        ModuleRegistration(action="tagger", params_schema=schema, defaults={"tag": HOSTILE})
    assert [error["loc"] for error in refused.value.errors()] == [("defaults", "tag")]


def test_every_built_in_schema_runs_on_the_linear_engine() -> None:
    assert {action: pattern_problems(spec.params_schema) for action, spec in builtin_catalog().items()} == {
        action: [] for action in builtin_catalog()
    }
