# intent_ref: platform.registry
"""Tenant JSON Schemas whose `$ref`s loop or multiply the work are refused when saved and never evaluated, and
a definition full of misspelt references reports a bounded number of problems with few "did you mean" lookups."""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest

from shared.policy.facts import TenantFacts
from shared.registry import schema_refs, schemas, step_checks
from shared.registry.catalog import ModuleSpec, builtin_catalog
from shared.registry.model import Definition, ResolvedBlueprint
from shared.registry.modules import MAX_REPORTED_ERRORS, ModuleRegistration, schema_problems
from shared.registry.schema_refs import (
    MAX_SCHEMA_REFS,
    SchemaEvaluation,
    evaluate_tenant_schema,
    reference_problems,
)
from shared.registry.schemas import EvaluationBudgetExceeded, TenantSchemaValidator, evaluation_budget
from shared.registry.validation import ValidationResult, validate_definition

VISIT_BUDGET = 50_000
"""allOf evaluations a test lets any schema make before it is stopped: far above what an accepted schema costs."""


class RunawayEvaluation(Exception):
    pass


@pytest.fixture(autouse=True)
def bounded_evaluation(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the validator's `allOf` steps and stops an evaluation that exceeds VISIT_BUDGET, so that a schema
    evaluated without the bounds fails the test at once instead of holding the run for minutes."""
    calls = [0]
    original = TenantSchemaValidator.VALIDATORS["allOf"]

    def counting(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] > VISIT_BUDGET:
            raise RunawayEvaluation(f"more than {VISIT_BUDGET} allOf evaluations")
        return original(*args)

    monkeypatch.setitem(TenantSchemaValidator.VALIDATORS, "allOf", counting)
    yield calls


def chain(depth: int, fan_out: int = 2) -> dict[str, Any]:
    """$defs where each entry is allOf of `fan_out` references to the next: fan_out ** depth evaluations."""
    defs: dict[str, Any] = {
        f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"} for _ in range(fan_out)]} for i in range(depth)
    }
    defs[f"d{depth}"] = {"type": "object"}
    return {"type": "object", "properties": {"v": {"type": "string"}}, "$defs": defs, "$ref": "#/$defs/d0"}


def intent(inputs: dict[str, Any], **step: Any) -> dict[str, Any]:
    return {
        "name": "bounds",
        "definition": {
            "inputs": inputs,
            "steps": [{"id": "a", "action": "event.emit", "type": "t", "data": {"v": "${inputs.v}"}, **step}],
        },
    }


def validate(doc: dict[str, Any], specs: list[ModuleSpec] | None = None, **kwargs: Any) -> ValidationResult:
    catalog = builtin_catalog().with_modules(specs or [])
    return validate_definition(doc, catalog=catalog, allow_private=False, **kwargs)


def located(result: ValidationResult) -> list[tuple[str, str]]:
    return [(error.pointer, error.code) for error in result.errors]


# --- intent input schemas -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "at"),
    [
        ({"type": "object", "properties": {"v": {"type": "string"}}, "$ref": "#"}, "/definition/inputs/$ref"),
        (
            {
                "type": "object",
                "$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}},
                "properties": {"v": {"$ref": "#/$defs/a"}},
            },
            "/definition/inputs/$defs/b/anyOf/0/$ref",
        ),
        (
            # a cycle through `properties` is refused as well: fan-out on it is exponential in the input's depth
            {"type": "object", "properties": {"v": {"type": "string"}, "child": {"$ref": "#"}}},
            "/definition/inputs/properties/child/$ref",
        ),
    ],
)
def test_a_self_referring_input_schema_is_refused_at_save(schema: dict[str, Any], at: str) -> None:
    result = validate(intent(schema))
    assert located(result) == [(at, "invalid_inputs_schema")]
    assert "cycle" in result.errors[0].message


def test_an_exponential_reference_chain_is_refused_at_save() -> None:
    result = validate(intent(chain(22)))
    assert located(result) == [("/definition/inputs", "invalid_inputs_schema")]
    assert "16,777,215 subschemas" in result.errors[0].message  # four per level: an allOf, two $refs, the next


def test_references_that_share_definitions_without_multiplying_are_accepted() -> None:
    shared = {"type": "string", "minLength": 1}
    schema = {
        "type": "object",
        "$defs": {"name": shared, "pair": {"allOf": [{"$ref": "#/$defs/name"}, {"$ref": "#/$defs/name"}]}},
        "properties": {"v": {"$ref": "#/$defs/name"}, "w": {"$ref": "#/$defs/pair"}},
    }
    assert validate(intent(schema)).ok
    assert validate(intent(chain(8))).ok  # 2^8 visits: well inside the bound


def test_too_many_references_are_refused() -> None:
    properties = {f"p{i}": {"$ref": "#/$defs/s"} for i in range(MAX_SCHEMA_REFS + 1)}
    schema = {"type": "object", "$defs": {"s": {"type": "string"}}, "properties": {"v": {}, **properties}}
    result = validate(intent(schema))
    assert located(result) == [("/definition/inputs", "invalid_inputs_schema")]
    assert f"at most {MAX_SCHEMA_REFS}" in result.errors[0].message


@pytest.mark.parametrize(
    ("subschema", "at"),
    [
        ({"$ref": "https://example.com/s.json"}, "/$ref"),
        ({"$ref": "#/$defs/nope"}, "/$ref"),
        ({"$ref": "#/required"}, "/$ref"),  # a list, not a schema
        ({"$ref": "#/allOf/x"}, "/$ref"),  # not an array index
        ({"$ref": "#/allOf/-1"}, "/$ref"),
        ({"$ref": "#named"}, "/$ref"),
        ({"$dynamicRef": "#/$defs/s"}, "/$dynamicRef"),
        ({"$id": "urn:elsewhere", "$defs": {"x": {}}}, "/$id"),
    ],
)
def test_references_that_are_not_plain_local_pointers_are_refused(subschema: dict[str, Any], at: str) -> None:
    schema = {
        "type": "object",
        "required": ["v"],
        "allOf": [{"type": "object"}],
        "$defs": {"s": {"type": "string"}},
        "properties": {"v": subschema},
    }
    assert located(validate(intent(schema))) == [("/definition/inputs/properties/v" + at, "invalid_inputs_schema")]


def test_a_property_named_like_a_data_keyword_is_walked_too() -> None:
    # "enum" is a property here, not the keyword: its reference must be walked like any other.
    schema = {"type": "object", "properties": {"v": {}, "enum": {"$ref": "#"}}}
    assert located(validate(intent(schema))) == [("/definition/inputs/properties/enum/$ref", "invalid_inputs_schema")]


# --- module parameter schemas -------------------------------------------------------------------------------------


def test_a_module_parameter_schema_that_refers_to_itself_is_refused_at_registration() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "string"}}, "$ref": "#"}
    assert [where for where, _ in schema_problems(schema)] == [("$ref",)]
    with pytest.raises(pydantic.ValidationError) as raised:
        ModuleRegistration(action="acme.thing", params_schema=schema)
    assert [error["loc"] for error in raised.value.errors()] == [("params_schema", "$ref")]


def test_an_exponential_module_parameter_schema_is_refused_at_registration() -> None:
    assert [where for where, _ in schema_problems(chain(22))] == [()]


def test_defaults_are_checked_with_references_into_whole_object_keywords() -> None:
    # allOf is left out of the partial schema the defaults are checked against; the reference into it is not.
    schema = {
        "type": "object",
        "allOf": [{"properties": {"a": {"type": "string"}}}],
        "properties": {"b": {"$ref": "#/allOf/0/properties/a"}},
    }
    assert ModuleRegistration(action="acme.thing", params_schema=schema, defaults={"b": "x"}).defaults == {"b": "x"}
    with pytest.raises(pydantic.ValidationError) as raised:
        ModuleRegistration(action="acme.thing", params_schema=schema, defaults={"b": 1})
    assert [error["loc"] for error in raised.value.errors()] == [("defaults", "b")]


@pytest.mark.parametrize(
    "schema",
    [{"type": "object", "properties": {"n": {"type": "string"}}, "$ref": "#"}, chain(22)],
    ids=["self-reference", "exponential"],
)
def test_a_module_schema_stored_before_the_bounds_is_a_problem_for_intents_not_a_crash(
    schema: dict[str, Any], bounded_evaluation: list[int]
) -> None:
    stored = ModuleSpec("acme.thing", "", schema, remote=True)
    doc = {"name": "x", "definition": {"steps": [{"id": "a", "action": "acme.thing", "n": "v"}]}}
    result = validate(doc, [stored])
    assert located(result) == [("/definition/steps/0", "invalid_params")]
    assert "the schema cannot be evaluated" in result.errors[0].message
    assert bounded_evaluation == [0]  # refused before any evaluation


def test_a_blueprint_schema_stored_before_the_bounds_is_a_problem_for_declarations() -> None:
    blueprint = ResolvedBlueprint(
        "deploy-application",
        1,
        Definition.model_validate({"inputs": chain(22), "steps": [{"action": "wait", "seconds": 1}]}),
    )
    doc = {"name": "deploy-application", "definition": {"v": "x"}}
    result = validate(doc, blueprint=blueprint)
    assert located(result) == [("/definition", "invalid_declaration")]
    assert "cannot be evaluated" in result.errors[0].message


# --- the safe evaluation ------------------------------------------------------------------------------------------


def test_the_safe_evaluation_reports_violations_and_refusals_alike() -> None:
    schema = {"type": "object", "properties": {"v": {"type": "string"}}}
    assert [list(v.absolute_path) for v in evaluate_tenant_schema(schema, {"v": 1}).violations] == [["v"]]
    assert evaluate_tenant_schema(schema, {"v": "x"}) == SchemaEvaluation()
    refused = evaluate_tenant_schema({**schema, "$ref": "#"}, {"v": "x"})
    assert refused.violations == () and refused.unusable is not None and "cycle" in refused.unusable


def test_the_safe_evaluation_answers_a_recursion_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exhausting:
        def __init__(self, *_args: Any, **_kwargs: Any) -> None:
            pass

        def iter_errors(self, _instance: Any) -> Iterator[Any]:
            raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(schema_refs, "TenantSchemaValidator", Exhausting)
    result = evaluate_tenant_schema({"type": "object"}, {})
    assert result.violations == () and result.unusable is not None


def test_every_builtin_parameter_schema_passes_the_reference_bounds() -> None:
    assert {action: reference_problems(spec.params_schema) for action, spec in builtin_catalog().items()} == {
        action: [] for action in builtin_catalog()
    }


# --- "did you mean" -----------------------------------------------------------------------------------------------


@pytest.fixture()
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []
    original = difflib.get_close_matches

    def counting(word: str, *args: Any, **kwargs: Any) -> list[str]:
        names.append(word)
        return original(word, *args, **kwargs)

    monkeypatch.setattr(step_checks.difflib, "get_close_matches", counting)
    return names


def misspelt(declared: int, references: int, distinct: int) -> dict[str, Any]:
    """A definition declaring `declared` inputs that reads `references` undeclared ones, `distinct` names in all."""
    data = {f"k{i}": f"${{inputs.q{i % distinct:05d}}}" for i in range(references)}
    inputs = {"type": "object", "properties": {f"p{i:05d}": {} for i in range(declared)}}
    step = {"id": "a", "action": "event.emit", "type": "t", "data": data}
    return {"name": "x", "definition": {"inputs": inputs, "steps": [step]}}


def test_many_references_to_undeclared_inputs_report_a_bounded_number_of_problems(lookups: list[str]) -> None:
    result = validate(misspelt(declared=20, references=3000, distinct=3000))
    assert {code for _, code in located(result)} == {"reference_undeclared_input"}
    assert len(result.errors) == MAX_REPORTED_ERRORS
    assert len(lookups) <= MAX_REPORTED_ERRORS


def test_a_name_misspelt_many_times_is_looked_up_once(lookups: list[str]) -> None:
    result = validate(misspelt(declared=20, references=30, distinct=1))
    assert len(result.errors) == 30
    assert lookups == ["q00000"]


def test_no_suggestion_among_too_many_candidates(lookups: list[str]) -> None:
    result = validate(misspelt(declared=step_checks.MAX_SUGGESTION_CANDIDATES + 1, references=5, distinct=5))
    assert len(result.errors) == 5 and lookups == []


def test_a_suggestion_is_still_made_for_a_plain_typo() -> None:
    doc = intent({"type": "object", "properties": {"v": {}, "version": {}}})
    doc["definition"]["steps"][0]["data"] = {"v": "${inputs.verson}"}
    result = validate(doc)
    assert located(result) == [("/definition/steps/0/data/v", "reference_undeclared_input")]
    assert "did you mean 'version'" in result.errors[0].message


# --- evaluation budget, bounded violations, linear keywords (ADR 0016, amended 2026-12-05) --------------------------


def nest_if(levels: int) -> dict[str, Any]:
    """`unevaluatedProperties` under `if`, `levels` deep: each level evaluates the one below twice."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"if": schema, "unevaluatedProperties": False}
    return schema


def count_keyword(monkeypatch: pytest.MonkeyPatch, keyword: str, stop_after: int) -> list[int]:
    """Counts TenantSchemaValidator's applications of `keyword`, failing the test past `stop_after`."""
    calls = [0]
    original = TenantSchemaValidator.VALIDATORS[keyword]

    def counting(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] > stop_after:
            raise RunawayEvaluation(f"more than {stop_after} {keyword} applications")
        return original(*args)

    monkeypatch.setitem(TenantSchemaValidator.VALIDATORS, keyword, counting)
    return calls


def test_unevaluated_nested_under_applicators_is_refused_at_save() -> None:
    assert reference_problems(nest_if(8)) == []
    assert [where for where, _ in reference_problems(nest_if(9))] == [()]
    assert "unevaluatedProperties" in reference_problems(nest_if(9))[0][1]
    # The same through references and unevaluatedItems.
    defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}], "unevaluatedItems": False} for i in range(12)}
    assert reference_problems({"$defs": {**defs, "d12": {}}, "$ref": "#/$defs/d0"}) != []
    result = validate(intent({"type": "object", "properties": {"v": {"type": "string"}}, "allOf": [nest_if(12)]}))
    assert located(result) == [("/definition/inputs", "invalid_inputs_schema")]
    with pytest.raises(pydantic.ValidationError, match="unevaluatedProperties"):
        ModuleRegistration(action="acme.nested", params_schema={"type": "object", "allOf": [nest_if(12)]})


def test_an_evaluation_past_its_step_budget_is_unusable_not_endless(monkeypatch: pytest.MonkeyPatch) -> None:
    # A schema stored before the nesting bound: 2^30 evaluations without a budget.
    monkeypatch.setattr(schema_refs, "MAX_UNEVALUATED_NESTING", 1_000, raising=False)
    calls = count_keyword(monkeypatch, "if", 500_000)
    result = evaluate_tenant_schema(nest_if(30), {"a": 1})
    assert result.violations == () and result.unusable is not None and "steps" in result.unusable
    assert calls[0] <= 100_000 + 10 * 2  # the budget: 100,000 steps and a few for each value of the instance


def test_an_evaluation_within_the_bounds_stays_small(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_keyword(monkeypatch, "if", 100_000)
    result = evaluate_tenant_schema(nest_if(8), {"a": 1})
    assert result.unusable is None and [v.validator for v in result.violations] == ["unevaluatedProperties"]
    assert calls[0] < 2**10


def test_violations_are_collected_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_keyword(monkeypatch, "type", 1_000_000)
    schema = {"type": "object", "properties": {"a": {"items": {"type": "string"}}}}
    result = evaluate_tenant_schema(schema, {"a": [0] * 20_000})
    assert result.unusable is None and 0 < len(result.violations) <= 300
    assert calls[0] <= 400  # the evaluation stopped once it had enough violations


def test_messages_repeating_a_large_schema_value_are_bounded() -> None:
    from shared.engine.start import _input_problems
    from shared.registry.modules import defaults_problems
    from shared.registry.problems import from_schema

    big = "x" * 100_000
    schema = {"type": "object", "properties": {"a": {"items": {"const": big}}, "e": {"enum": [big, 1]}}}
    instance = {"a": [0] * 1_000, "e": 2}
    result = evaluate_tenant_schema(schema, instance)
    assert len(result.violations) <= 300 and max(len(v.message) for v in result.violations) <= 300
    problems = _input_problems(schema, instance)
    assert problems and max(len(problem["detail"]) for problem in problems) <= 300
    located_problems = from_schema(schema, instance, lambda path: str(path), code="c", subject="s")
    assert 0 < len(located_problems) <= 50 and max(len(p.message) for p in located_problems) <= 300
    defaults = defaults_problems(schema, instance)
    assert 0 < len(defaults) <= 50 and max(len(message) for _, message in defaults) <= 300


def test_unexpected_properties_are_reported_up_to_a_bound() -> None:
    from shared.registry.problems import from_schema

    schema = {"type": "object", "additionalProperties": False}
    problems = from_schema(schema, {f"k{i}": 0 for i in range(5_000)}, str, code="c", subject="s")
    assert len(problems) == MAX_REPORTED_ERRORS


def test_an_array_index_of_thousands_of_digits_is_refused_not_raised() -> None:
    schema = {"type": "object", "properties": {"v": {}}, "allOf": [{}], "$ref": "#/allOf/" + "1" * 5_000}
    assert [where for where, _ in reference_problems(schema)] == [("$ref",)]
    assert located(validate(intent(schema))) == [("/definition/inputs/$ref", "invalid_inputs_schema")]


def test_the_safe_evaluation_answers_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing:
        def __init__(self, *_args: Any, **_kwargs: Any) -> None:
            pass

        def iter_errors(self, _instance: Any) -> Iterator[Any]:
            raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")

    monkeypatch.setattr(schema_refs, "TenantSchemaValidator", Failing)
    result = evaluate_tenant_schema({"type": "object"}, {})
    assert result.violations == () and result.unusable is not None


@pytest.fixture()
def equal_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts jsonschema's pairwise equality, which its `uniqueItems` and `enum` use."""
    import jsonschema._keywords
    import jsonschema._utils

    calls = [0]
    original = jsonschema._utils.equal

    def counting(one: Any, two: Any) -> bool:
        calls[0] += 1
        return bool(original(one, two))

    monkeypatch.setattr(jsonschema._utils, "equal", counting)
    monkeypatch.setattr(jsonschema._keywords, "equal", counting)
    return calls


def test_unique_items_is_linear(equal_calls: list[int]) -> None:
    schema = {"type": "array", "uniqueItems": True}
    items: list[Any] = ["", *range(3_000)]  # unsortable: the library compared every pair
    assert evaluate_tenant_schema(schema, items) == SchemaEvaluation()
    duplicated = evaluate_tenant_schema(schema, [*items, 2_999])
    assert [v.message.endswith("has non-unique elements") for v in duplicated.violations] == [True]
    assert equal_calls[0] < 100


@pytest.mark.parametrize(
    ("items", "unique"),
    [
        ([1, 1.0], False),
        ([True, 1], True),
        ([False, 0], True),
        ([{"a": 1, "b": [1.0]}, {"b": [1], "a": 1}], False),
        ([[1, True], [1.0, 1]], True),
        ([None, "null"], True),
        ([0.5, 0.5], False),
        ([{"a": None}, {}], True),
    ],
)
def test_unique_items_keeps_json_schema_equality(items: list[Any], unique: bool) -> None:
    result = evaluate_tenant_schema({"uniqueItems": True}, items)
    assert (result.violations == ()) is unique and result.unusable is None


def test_enum_is_a_lookup(equal_calls: list[int]) -> None:
    schema = {"type": "object", "properties": {"a": {"items": {"enum": list(range(2_000))}}}}
    assert evaluate_tenant_schema(schema, {"a": [1_999] * 2_000}) == SchemaEvaluation()
    assert equal_calls[0] < 100
    refused = evaluate_tenant_schema(schema, {"a": [2_000]})
    assert [v.message.startswith("2000 is not one of [0, 1, 2") for v in refused.violations] == [True]


@pytest.mark.parametrize(
    ("enum", "instance", "valid"),
    [([1], 1.0, True), ([1], True, False), ([True], 1, False), ([{"a": 1.0}], {"a": 1}, True), (["1"], 1, False)],
)
def test_enum_keeps_json_schema_equality(enum: list[Any], instance: Any, valid: bool) -> None:
    assert (evaluate_tenant_schema({"enum": enum}, instance).violations == ()) is valid


def test_too_many_distinct_patterns_are_refused_at_save() -> None:
    from shared.registry.schemas import pattern_problems

    def patterned(count: int) -> dict[str, Any]:
        return {"type": "object", "patternProperties": {f"^p{i}$": {} for i in range(count)}}

    assert pattern_problems(patterned(256)) == [] and schema_problems(patterned(256)) == []
    assert [where for where, _ in pattern_problems(patterned(257))] == [()]
    assert [where for where, _ in schema_problems(patterned(257))] == [()]
    assert located(validate(intent({**patterned(257), "properties": {"v": {}}}))) == [
        ("/definition/inputs", "invalid_inputs_schema")
    ]


def test_patterns_are_not_compiled_again_for_each_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.registry import schemas

    compiled = [0]
    original = schemas.re2.compile

    def counting(*args: Any) -> Any:
        compiled[0] += 1
        if compiled[0] > 20_000:
            raise RunawayEvaluation("more than 20,000 compilations")
        return original(*args)

    monkeypatch.setattr(schemas.re2, "compile", counting)
    schemas._compiled.cache_clear()
    # Stored before the cap: more patterns than the compiled-pattern cache holds.
    schema = {
        "type": "object",
        "patternProperties": {f"^p{i}$": {} for i in range(1_100)},
        "additionalProperties": False,
    }
    result = evaluate_tenant_schema(schema, {f"k{i}": 0 for i in range(30)})
    assert result.unusable is None and len(result.violations) == 1
    assert compiled[0] <= 4 * 1_100
    schemas._compiled.cache_clear()


def chained_anyof(definitions: int, levels: int) -> dict[str, Any]:
    """$defs in a chain, each reaching the next through `levels` nested anyOf: deep evaluation, few references."""
    defs: dict[str, Any] = {}
    for i in range(definitions):
        inner: dict[str, Any] = {"$ref": f"#/$defs/d{i + 1}"}
        for _ in range(levels):
            inner = {"anyOf": [inner]}
        defs[f"d{i}"] = inner
    defs[f"d{definitions}"] = {"type": "object"}
    return {"type": "object", "$defs": defs, "$ref": "#/$defs/d0"}


def test_a_reference_chain_nesting_too_deep_is_refused_at_save() -> None:
    # 60 references through 8 anyOf each: within every other limit, and RecursionError when evaluated.
    deep = chained_anyof(60, 8)
    assert [where for where, _ in reference_problems(deep)] == [()]
    assert "subschemas one inside the other" in reference_problems(deep)[0][1]
    assert located(validate(intent({**deep, "properties": {"v": {}}}))) == [
        ("/definition/inputs", "invalid_inputs_schema")
    ]
    # The root, 9 subschemas for each definition (itself, 7 anyOf inside it, the $ref), the last definition.
    assert reference_problems(chained_anyof(11, 8)) != []  # 1 + 11 * 9 + 1 = 101 deep
    allowed = chained_anyof(10, 8)  # 92 deep
    assert reference_problems(allowed) == []
    assert evaluate_tenant_schema(allowed, {}) == SchemaEvaluation()


# --- one budget for the whole check of a definition's steps (ADR 0016, amended 2026-12-06) ---------------------------


def heavy_module(per_item: int = 300, items: int = 66) -> ModuleSpec:
    """A module whose every evaluation applies `type` about per_item x items times, through its defaults."""
    schema = {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"allOf": [{"type": "integer"}] * per_item}}},
    }
    return ModuleSpec("acme.heavy", "", schema, remote=True, defaults={"a": [0] * items})


def heavy_steps(count: int, *, distinct: bool) -> dict[str, Any]:
    steps = [
        {
            "id": f"s{i}",
            "action": "acme.heavy",
            **({"x": i} if distinct else {}),
            "compensate": {"action": "acme.heavy", **({"x": -i} if distinct else {})},
        }
        for i in range(count)
    ]
    return {"name": "heavy", "definition": {"steps": steps}}


def test_the_steps_of_one_definition_share_one_evaluation_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each evaluation is well within its own bound (about 20,000 steps); 400 of them were not bounded at all.
    monkeypatch.setattr(step_checks, "MAX_DEFINITION_EVALUATION_STEPS", 50_000)
    types = count_keyword(monkeypatch, "type", 200_000)
    result = validate(heavy_steps(200, distinct=True), [heavy_module()])
    assert [code for _, code in located(result)] == ["invalid_params"]
    assert result.errors[0].pointer.startswith("/definition/steps/")
    assert "more than 50,000 steps" in result.errors[0].message and "acme.heavy" in result.errors[0].message
    assert types[0] <= 50_000  # the whole check stopped once the definition's budget was spent


def test_the_same_parameters_of_the_same_module_are_evaluated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    types = count_keyword(monkeypatch, "type", 200_000)
    assert validate(heavy_steps(200, distinct=False), [heavy_module()]).errors == ()
    one = types[0]
    types[0] = 0
    assert validate(heavy_steps(1, distinct=False), [heavy_module()]).errors == ()
    assert one == types[0]  # 200 steps and their compensations cost what one step does


def test_a_module_the_tenant_may_not_use_is_refused_before_any_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    types = count_keyword(monkeypatch, "type", 200_000)
    facts = TenantFacts(uuid.uuid4(), "active", frozenset({"staging"}), frozenset({"wait"}))
    result = validate(heavy_steps(10, distinct=True), [heavy_module()], tenant=facts)
    assert {code for _, code in located(result)} == {"module_not_allowed"}
    assert len(result.errors) == 20  # each step and each compensation
    assert types[0] == 0


def test_an_enclosing_budget_is_the_one_that_counts() -> None:
    with evaluation_budget(100) as outer:
        with evaluation_budget(1_000) as inner:
            assert inner.limit == 100
            inner.charge(60)
        assert outer.spent == 60
        with pytest.raises(EvaluationBudgetExceeded) as raised, evaluation_budget(1_000) as again:
            again.charge(41)  # more than the 40 the enclosing budget has left
        assert raised.value.budget is outer
        assert outer.steps < 0
    with evaluation_budget(100) as outer, pytest.raises(EvaluationBudgetExceeded) as raised:
        with evaluation_budget(10) as small:
            small.charge(11)  # its own bound, not the enclosing one's
    assert raised.value.budget is small and outer.spent == 11


def test_an_evaluation_inside_a_spent_enclosing_budget_raises_for_its_owner() -> None:
    with evaluation_budget(5) as outer:
        with pytest.raises(EvaluationBudgetExceeded) as raised:
            evaluate_tenant_schema({"allOf": [{"type": "integer"}] * 10}, 1)
        assert raised.value.budget is outer
    # Alone, the same evaluation has its own budget and passes.
    assert evaluate_tenant_schema({"allOf": [{"type": "integer"}] * 10}, 1) == SchemaEvaluation()


# --- `enum`, `const` and `uniqueItems` encode each value once, charged for its size --------------------------------


@pytest.fixture()
def encodings(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every value `enum`, `const` and `uniqueItems` encode, in order."""
    encoded: list[Any] = []
    original = schemas.canonical_text

    def counting(value: Any) -> str:
        encoded.append(value)
        return original(value)

    monkeypatch.setattr(schemas, "canonical_text", counting)
    return encoded


def test_many_enums_on_one_large_value_encode_it_once(encodings: list[Any]) -> None:
    instance = {"a": [0] * 20_000}
    schema = {"type": "object", "allOf": [{"not": {"enum": [0]}}] * 200}
    assert evaluate_tenant_schema(schema, instance) == SchemaEvaluation()
    assert sum(value is instance for value in encodings) == 1


def test_many_consts_on_one_large_value_encode_it_once(encodings: list[Any]) -> None:
    instance = {"a": list(range(5_000))}
    schema = {"type": "object", "allOf": [{"const": {"a": list(range(5_000))}}] * 200}
    assert evaluate_tenant_schema(schema, instance) == SchemaEvaluation()
    assert sum(value is instance for value in encodings) == 1
    refused = evaluate_tenant_schema({"allOf": [{"const": {"a": [0]}}] * 200}, instance)
    assert len(refused.violations) == 200 and sum(value is instance for value in encodings) == 2


def test_many_unique_items_on_one_array_encode_each_item_once(encodings: list[Any]) -> None:
    items = [f"item {i}" for i in range(2_000)]
    schema = {"properties": {"a": {"allOf": [{"uniqueItems": True}] * 100}}}
    assert evaluate_tenant_schema(schema, {"a": items}) == SchemaEvaluation()
    assert len(encodings) == len(items)
    duplicated = evaluate_tenant_schema(schema, {"a": [*items, "item 0"]})
    assert [v.validator for v in duplicated.violations] == ["uniqueItems"] * 100


def test_encoding_a_value_is_charged_for_its_size(encodings: list[Any]) -> None:
    instance = [0] * 5_000
    with evaluation_budget(1_000_000) as budget:
        assert [*TenantSchemaValidator({"enum": [1]}).iter_errors(instance)] != []
    assert budget.spent >= 5_000
    with evaluation_budget(1_000), pytest.raises(EvaluationBudgetExceeded):
        [*TenantSchemaValidator({"enum": [1]}).iter_errors(instance)]
    assert sum(value is instance for value in encodings) == 1  # the second time refused before the work


@pytest.mark.parametrize(
    ("const", "instance", "valid"),
    [
        (1, 1.0, True),
        (1, True, False),
        (False, 0, False),
        ({"a": 1.0, "b": [1]}, {"b": [1.0], "a": 1}, True),
        ([1, True], [1.0, 1], False),
        (None, "null", False),
        ("x" * 100, "x" * 100, True),
    ],
)
def test_const_keeps_json_schema_equality(const: Any, instance: Any, valid: bool) -> None:
    assert (evaluate_tenant_schema({"const": const}, instance).violations == ()) is valid
