# intent_ref: platform.registry
"""A tenant schema's violations never quote a whole instance (ADR 0021, amended 2026-12-07): the library's keywords
built `f"{instance!r} ..."` for every failure, uncharged, even where only validity was asked (`not`, `if`,
`contains`), and `anyOf`/`oneOf` kept every failing branch's message. A 400 KB array under 300 `not`s of `maxItems`
took 3.8 s and was valid; a 743-byte schema of references made 2,187 copies of it. Here each message quotes the
instance in the bounded form, whatever the keyword, a `false` subschema included.

The instances are arrays and objects whose `repr` fails the test: the bounded form reads a few members and never
asks the whole value for its `repr`. A subschema naming its `$schema` is still evaluated by the tenant validator
(the library's own picked Python's backtracking regexes for it)."""

from __future__ import annotations

from itertools import islice
from typing import Any

import pytest

from shared.registry.schema_refs import MAX_VIOLATIONS, SchemaEvaluation, evaluate_tenant_schema
from shared.registry.schemas import MAX_BRANCH_ERRORS, TenantSchemaValidator, evaluation_budget

LONGEST_MESSAGE = 400
"""The longest message a violation here may carry: a few members of the instance and of the schema."""


class Array(list[Any]):
    """A JSON array whose `repr` fails the test: only the bounded form (which reads a few members) may quote it."""

    def __repr__(self) -> str:
        raise AssertionError("a whole array was quoted")


class Object(dict[str, Any]):
    """A JSON object whose `repr` fails the test, as Array."""

    def __repr__(self) -> str:
        raise AssertionError("a whole object was quoted")


# The bounded form reads every JSON array and object as it reads a list and a dict, by its type's name.
Array.__name__ = "list"
Object.__name__ = "dict"


def big_array(length: int = 20_000) -> Array:
    return Array([0] * length)


def big_rows(length: int = 5_000) -> Array:
    """An array of arrays, each with a `repr` that fails the test: a slice of it quoted whole fails too."""
    return Array([Array([index]) for index in range(length)])


def big_object(length: int = 5_000) -> Object:
    return Object({f"k{i}": i for i in range(length)})


def messages(evaluation: SchemaEvaluation) -> list[str]:
    """Every message of `evaluation`'s violations, those of their branches (`anyOf`, `oneOf`) included."""
    assert evaluation.unusable is None, evaluation.unusable
    return all_messages(list(evaluation.violations))


def raw_messages(schema: Any, instance: Any) -> list[str]:
    """Every message of the violations the validator makes, as it made them (an evaluation shortens them after)."""
    with evaluation_budget(1_000_000):
        return all_messages(list(islice(TenantSchemaValidator(schema).iter_errors(instance), MAX_VIOLATIONS)))


def all_messages(violations: list[Any]) -> list[str]:
    """The messages of `violations` and of their branches."""
    found, stack = [], violations
    while stack:
        error = stack.pop()
        found.append(error.message)
        stack.extend(error.context)
    return found


def chain_of_references(levels: int = 7) -> dict[str, Any]:
    """`x` under a chain of `$defs`, each applying the one below three times: 3**levels `not`s of `maxItems`."""
    definitions: dict[str, Any] = {"d0": {"not": {"maxItems": 0}}}
    for level in range(1, levels + 1):
        definitions[f"d{level}"] = {"allOf": [{"$ref": f"#/$defs/d{level - 1}"}] * 3}
    return {"$defs": definitions, "type": "object", "properties": {"x": {"$ref": f"#/$defs/d{levels}"}}}


@pytest.mark.parametrize(
    "subschema",
    [
        {"allOf": [{"not": {"maxItems": 0}}] * 300},
        {"not": {"not": {"minItems": 1}}},
        {"if": {"maxItems": 0}, "then": {}},
        {"not": {"contains": {"type": "string"}}},
        {"not": False},
        {"not": {"items": False}},
        {"not": {"prefixItems": [{}], "unevaluatedItems": False}},
    ],
    ids=["not-maxItems", "not-not", "if", "contains", "not-false", "not-items-false", "not-unevaluatedItems"],
)
def test_asking_whether_an_array_is_valid_never_quotes_it(subschema: dict[str, Any]) -> None:
    schema = {"type": "object", "properties": {"x": subschema}}
    assert messages(evaluate_tenant_schema(schema, {"x": big_rows()})) == []


def test_references_applying_not_thousands_of_times_never_quote_the_instance() -> None:
    # 2,187 copies of the instance before: 4.8 s on 100 KB.
    assert messages(evaluate_tenant_schema(chain_of_references(), {"x": big_array()})) == []


@pytest.mark.parametrize(
    "subschema",
    [
        {"anyOf": [{"maxItems": 0}] * 200},
        {"oneOf": [{"maxItems": 0}] * 200},
        {"oneOf": [{}, {"type": "array"}]},
        {"minItems": 30_000},
        {"maxItems": 1},
        {"maxItems": 0},
        {"contains": {"type": "string"}},
        {"items": False},
        {"prefixItems": [{}], "items": False},
        {"prefixItems": [{}], "unevaluatedItems": False},
        {"allOf": [False] * 50},
        {"not": {}},
    ],
    ids=[
        "anyOf",
        "oneOf-none",
        "oneOf-two",
        "minItems",
        "maxItems",
        "maxItems-0",
        "contains",
        "items-false",
        "prefix-items-false",
        "unevaluatedItems",
        "false",
        "not",
    ],
)
def test_an_arrays_violations_quote_it_in_a_bounded_form(subschema: dict[str, Any]) -> None:
    schema = {"type": "object", "properties": {"x": subschema}}
    found = raw_messages(schema, {"x": big_array()})
    assert found and all(len(message) <= LONGEST_MESSAGE for message in found)


@pytest.mark.parametrize(
    "subschema",
    [{"minProperties": 10_000}, {"maxProperties": 1}, {"maxProperties": 0}, {"anyOf": [{"maxProperties": 0}] * 50}],
    ids=["minProperties", "maxProperties", "maxProperties-0", "anyOf"],
)
def test_an_objects_violations_quote_it_in_a_bounded_form(subschema: dict[str, Any]) -> None:
    found = raw_messages({"properties": {"x": subschema}}, {"x": big_object()})
    assert found and all(len(message) <= LONGEST_MESSAGE for message in found)


@pytest.mark.parametrize("subschema", [{"maxLength": 10}, {"minLength": 300_000}, {"not": {"maxLength": 300_000}}])
def test_a_long_strings_violations_quote_it_in_a_bounded_form(subschema: dict[str, Any]) -> None:
    found = raw_messages({"properties": {"x": subschema}}, {"x": "a" * 200_000})
    assert found and all(len(message) <= LONGEST_MESSAGE for message in found)


def test_any_of_branches_over_a_large_array_cost_their_keyword_applications_only() -> None:
    # 200 branches over 600 KB held 169 MB of messages and took 2.6 s.
    schema = {"type": "object", "properties": {"x": {"anyOf": [{"maxItems": 0}] * 200}}}
    with evaluation_budget(10_000) as budget:
        errors = list(TenantSchemaValidator(schema).iter_errors({"x": big_array()}))
    [error] = errors
    assert len(error.context) == 200 and sum(len(each.message) for each in error.context) <= 200 * LONGEST_MESSAGE
    assert budget.spent <= 1_000


def test_the_violations_kept_stay_bounded() -> None:
    schema = {"type": "object", "properties": {"x": {"items": {"maxItems": 0}}}}
    rows = Array([Array([0] * 1_000) for _ in range(300)])
    found = raw_messages(schema, {"x": rows})
    assert len(found) == MAX_VIOLATIONS and all(len(message) <= LONGEST_MESSAGE for message in found)


def test_a_subschema_naming_its_dialect_is_evaluated_by_the_tenant_validator() -> None:
    # The library picked its own validator for it by `$schema`: Python's backtracking `re` and no budget, so a
    # pattern RE2 refuses ran, and `^(a+)+$` on 30 characters held a worker for a minute.
    dialect = "https://json-schema.org/draft/2020-12/schema"
    schema = {"type": "object", "properties": {"x": {"$schema": dialect, "pattern": "(?=a)b"}}}
    found = messages(evaluate_tenant_schema(schema, {"x": "ab"}))
    assert found == ["the pattern '(?=a)b' cannot be evaluated"]
    referred = {"$defs": {"d": {"$schema": dialect, "minItems": 30_000}}, "properties": {"x": {"$ref": "#/$defs/d"}}}
    [message] = raw_messages(referred, {"x": big_array()})
    assert len(message) <= LONGEST_MESSAGE


def test_a_failing_branch_is_evaluated_to_its_first_error_only() -> None:
    # Every error of every branch was made and kept: 360,000 over 120,000 items under three (6 s, +1 GB).
    branches = [{"items": {"type": kind}} for kind in ("string", "boolean", "null")]
    for keyword in ("anyOf", "oneOf"):
        with evaluation_budget(1_000_000) as budget:
            [error] = list(TenantSchemaValidator({keyword: branches}).iter_errors(big_array()))
        assert len(error.context) == 3 and budget.spent <= 50


def test_the_branches_kept_are_bounded_and_keep_none_of_their_own() -> None:
    inner = {"anyOf": [{"maxItems": 0}] * 50}
    with evaluation_budget(1_000_000):
        [error] = list(TenantSchemaValidator({"anyOf": [inner] * (MAX_BRANCH_ERRORS + 50)}).iter_errors(big_array()))
    assert len(error.context) == MAX_BRANCH_ERRORS and all(not branch.context for branch in error.context)


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({"required": ["x" * 200_000]}, {}),
        ({"dependentRequired": {"a": ["x" * 200_000]}}, {"a": 1}),
        ({"dependentRequired": {"a" * 200_000: ["x"]}}, {"a" * 200_000: 1}),
    ],
    ids=["required", "dependentRequired-name", "dependentRequired-key"],
)
def test_a_missing_names_message_quotes_it_in_a_bounded_form(schema: dict[str, Any], instance: Any) -> None:
    # A 200,000-character name was quoted whole in each message, made even under `not` (2,048 of them: 0.5 s).
    [message] = raw_messages(schema, instance)
    assert len(message) <= LONGEST_MESSAGE


def test_a_missing_short_names_message_is_as_before() -> None:
    assert raw_messages({"required": ["a"]}, {}) == ["'a' is a required property"]
    assert raw_messages({"dependentRequired": {"a": ["b"]}}, {"a": 1}) == ["'b' is a dependency of 'a'"]
