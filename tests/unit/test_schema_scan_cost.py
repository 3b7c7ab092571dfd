# intent_ref: platform.registry
"""What a tenant schema's evaluation does in proportion to its instance is charged to its budget (ADR 0021, amended
2026-12-07, review of 94c7cb3): a descend into a subschema that applies no keyword (`{"title": "t"}`, `true`), the
scans of an object's keys by `additionalProperties` and the `unevaluated*` bookkeeping, and the indexes
`unevaluatedItems` collects. Before, 60 `items: {title}` over 100,000 items took 15 s, 300 `not`s of
`additionalProperties: false` over 60,000 keys 6.5 s, and `unevaluatedItems` searched a list once per item (12.7 s
on 60,000): each charged a step per keyword application, whatever the instance's size.

A schema that runs out of its budget whatever the input (on an empty one too) is the version's fault (409), not the
input's (422). Steps are counted, not timed."""

from __future__ import annotations

from typing import Any

import pytest

from shared.engine.start import NoLongerValidError, _input_problems
from shared.registry import schemas
from shared.registry.schema_refs import SchemaEvaluation, evaluate_tenant_schema
from shared.registry.schemas import TenantSchemaValidator, evaluation_budget

ITEMS = 2_000


def spent(schema: Any, instance: Any) -> int:
    """The steps an evaluation of `instance` against `schema` charges (its violations all made)."""
    with evaluation_budget(100 * schemas.MAX_TOTAL_STEPS) as budget:
        list(TenantSchemaValidator(schema).iter_errors(instance))
    return budget.spent


def big_object(length: int = ITEMS) -> dict[str, int]:
    return {f"k{index:05d}": index for index in range(length)}


@pytest.mark.parametrize(
    "subschema",
    [{"items": {"title": "t"}}, {"items": True}, {"contains": {"title": "t"}}, {"contains": True}],
    ids=["items-title", "items-true", "contains-title", "contains-true"],
)
def test_a_descend_applying_no_keyword_is_charged_a_step(subschema: dict[str, Any]) -> None:
    # 60 of `items: {title}` over 100,000 items: 15 s, 60 steps charged.
    assert spent({"allOf": [subschema] * 10}, [0] * ITEMS) >= 10 * ITEMS


@pytest.mark.parametrize("subschema", [{"title": "t"}, {}], ids=["title", "empty"])
def test_a_descend_into_each_extra_key_is_charged_a_step(subschema: Any) -> None:
    # 10 of `additionalProperties: {title}` over 60,000 keys: 1.8 s, 10 steps charged.
    assert spent({"allOf": [{"additionalProperties": subschema}] * 10}, big_object()) >= 10 * ITEMS


def test_many_descends_into_an_empty_subschema_are_refused() -> None:
    schema = {"type": "object", "properties": {"x": {"allOf": [{"items": {"title": "t"}}] * 60}}}
    evaluated = evaluate_tenant_schema(schema, {"x": [0] * 100_000})
    assert evaluated.too_costly and evaluated.unusable == schemas.STEPS_EXCEEDED


@pytest.mark.parametrize(
    "subschema",
    [{"not": {"additionalProperties": False}}, {"not": {"unevaluatedProperties": False}}],
    ids=["additionalProperties", "unevaluatedProperties"],
)
def test_scanning_an_objects_keys_is_charged(subschema: dict[str, Any]) -> None:
    # 300 of these over 60,000 keys: 6.5 s and 4.1 s, a step each.
    assert spent({"allOf": [subschema] * 10}, big_object()) >= 10 * ITEMS // schemas.KEYS_PER_STEP


@pytest.mark.parametrize("keyword", ["additionalProperties", "unevaluatedProperties"])
def test_unexpected_keys_are_quoted_a_few_with_a_count(keyword: str) -> None:
    # Every extra key was sorted and quoted, in each message, made even under `not`.
    [error] = list(TenantSchemaValidator({keyword: False}).iter_errors(big_object()))
    quoted = ", ".join(repr(f"k{index:05d}") for index in range(schemas.QUOTED_KEYS))
    assert f"{quoted} and {ITEMS - schemas.QUOTED_KEYS:,} more were unexpected" in error.message
    assert len(error.message) <= 200


def test_one_unexpected_key_is_quoted_as_before() -> None:
    [error] = list(TenantSchemaValidator({"additionalProperties": False}).iter_errors({"k": 1}))
    assert error.message == "Additional properties are not allowed ('k' was unexpected)"


@pytest.mark.parametrize(
    "subschema",
    [{"items": {}, "unevaluatedItems": False}, {"prefixItems": [{}], "unevaluatedItems": True}],
    ids=["items", "prefixItems"],
)
def test_the_indexes_unevaluated_items_collects_are_charged(subschema: dict[str, Any]) -> None:
    # Kept in a list searched once per item, uncharged: 12.7 s on 60,000 items.
    without = {key: value for key, value in subschema.items() if key != "unevaluatedItems"}
    assert spent(subschema, [0] * ITEMS) - spent(without, [0] * ITEMS) >= ITEMS // schemas.KEYS_PER_STEP


def test_unevaluated_items_over_a_large_array_is_linear_and_still_enforced() -> None:
    schema = {"type": "object", "properties": {"x": {"contains": {"const": 1}, "unevaluatedItems": {"const": 0}}}}
    assert evaluate_tenant_schema(schema, {"x": [1, 0] * 15_000}) == SchemaEvaluation()
    [violation] = evaluate_tenant_schema(schema, {"x": [1, 0] * 15_000 + [2]}).violations
    assert violation.message == "Unevaluated items are not allowed (2 was unexpected)"


def costly_alone() -> dict[str, Any]:
    """A schema that spends its whole budget on any object, `{}` too: ten levels of `$defs`, each applying the next
    twice, down to a leaf of 1,600 unknown keys (about 100 steps a descend)."""
    definitions: dict[str, Any] = {"d0": {f"unknown{index}": index for index in range(1_600)}}
    for level in range(1, 11):
        definitions[f"d{level}"] = {"allOf": [{"$ref": f"#/$defs/d{level - 1}"}] * 2}
    return {"$defs": definitions, "type": "object", "allOf": [{"$ref": "#/$defs/d10"}]}


@pytest.mark.parametrize("given", [{}, {"x": 1}], ids=["empty", "small"])
def test_a_schema_too_costly_for_any_input_is_the_versions_fault(given: dict[str, Any]) -> None:
    # It was the start's invalid input (422): "send a smaller one", though none could pass.
    with pytest.raises(NoLongerValidError, match="more steps than allowed whatever the input"):
        _input_problems(costly_alone(), given)
    evaluated = evaluate_tenant_schema(costly_alone(), given)
    assert not evaluated.too_costly and evaluated.unusable == f"{schemas.STEPS_EXCEEDED} whatever the input"


def test_an_input_too_costly_for_a_cheap_schema_is_still_the_inputs_fault() -> None:
    schema = {"type": "object", "properties": {"x": {"allOf": [{"items": {"title": "t"}}] * 60}}}
    [problem] = _input_problems(schema, {"x": [0] * 100_000})
    assert problem["pointer"] == "/input" and "input is too costly" in problem["detail"]
