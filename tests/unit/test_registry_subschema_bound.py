# intent_ref: platform.registry
"""A tenant's JSON Schema with more than MAX_SUBSCHEMAS subschemas is refused before the meta-schema checks it."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from jsonschema import Draft202012Validator

from shared.registry import catalog, modules, problems
from shared.registry.catalog import ModuleSpec, builtin_catalog
from shared.registry.modules import ModuleRegistration
from shared.registry.problems import MAX_SUBSCHEMAS, schema_document_problems, too_many_subschemas
from shared.registry.validation import ValidationResult, validate_definition

REPORTED = "85,000"
"""The report's schema: an `allOf` of 85,000 `{}` (255 KB) took 24 s to check against the meta-schema."""


def crowded(subschemas: int) -> dict[str, Any]:
    """An object schema holding exactly `subschemas` subschemas, itself included."""
    return {"type": "object", "allOf": [{}] * (subschemas - 1)}


@pytest.fixture()
def meta_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many schemas are checked against the meta-schema from here on, on every path that checks one."""
    builtin_catalog()  # built once per process, checking each built-in's schema: not what a test counts
    seen: list[int] = []
    original = problems.Draft202012Validator

    class Counting:
        META_SCHEMA = original.META_SCHEMA

        def __new__(cls, schema: Any, *args: Any, **kwargs: Any) -> Any:
            if schema is original.META_SCHEMA:
                seen.append(1)
            return original(schema, *args, **kwargs)

    class CountingMeta:
        def iter_errors(self, schema: Any) -> Any:
            seen.append(1)
            return modules_meta.iter_errors(schema)

    def check_schema(schema: Any) -> None:
        seen.append(1)
        check(schema)

    modules_meta, check = modules._META_VALIDATOR, Draft202012Validator.check_schema
    monkeypatch.setattr(problems, "Draft202012Validator", Counting)
    monkeypatch.setattr(modules, "_META_VALIDATOR", CountingMeta())
    monkeypatch.setattr(catalog.Draft202012Validator, "check_schema", check_schema)
    return seen


def validate(inputs: dict[str, Any]) -> ValidationResult:
    doc = {"name": "crowded", "definition": {"inputs": inputs, "steps": [{"id": "a", "action": "wait", "seconds": 1}]}}
    return validate_definition(doc, catalog=builtin_catalog(), allow_private=False)


def test_the_count_stops_past_the_limit_and_counts_every_kind_of_subschema() -> None:
    schema = {
        "properties": {"a": {"items": {"not": True}}},
        "$defs": {"d": {"anyOf": [{}, {}]}},
        "dependencies": {"x": ["y"], "z": {}},
        "contentSchema": {},
        "enum": [{}, {}, {}],  # values, not schemas
    }
    # The root, a, its items, their not, d, its two anyOf, z and the contentSchema: 9.
    assert too_many_subschemas(schema, 9) is None
    assert too_many_subschemas(schema, 8) is not None


def test_an_input_schema_past_the_bound_is_refused_without_the_meta_schema(meta_checks: list[int]) -> None:
    result = validate(crowded(85_000))
    assert [(error.pointer, error.code) for error in result.errors] == [("/definition/inputs", "invalid_inputs_schema")]
    assert f"more than {MAX_SUBSCHEMAS:,} subschemas" in result.errors[0].message
    assert f"at most {MAX_SUBSCHEMAS:,} are allowed" in result.errors[0].message
    assert meta_checks == []


def test_an_input_schema_at_the_bound_is_checked_and_accepted(meta_checks: list[int]) -> None:
    assert validate(crowded(MAX_SUBSCHEMAS)).ok
    assert meta_checks == [1]
    assert not validate(crowded(MAX_SUBSCHEMAS + 1)).ok


def test_the_bound_is_checked_before_everything_else_about_the_schema(meta_checks: list[int]) -> None:
    # Broken as well, but only the bound is reported: the rest would need the meta-schema's walk of all of it.
    schema = {**crowded(MAX_SUBSCHEMAS + 1), "minimum": "nonsense"}
    assert [error.pointer for error in schema_document_problems(schema, "/x", code="c")] == ["/x"]
    assert meta_checks == []


def test_a_module_schema_past_the_bound_is_refused_at_registration(meta_checks: list[int]) -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        ModuleRegistration(action="acme.crowded", params_schema=crowded(10_000))  # 30 KB: within the byte limit
    [error] = raised.value.errors()
    assert error["loc"] == ("params_schema",)
    assert f"at most {MAX_SUBSCHEMAS:,} are allowed" in error["msg"]
    assert meta_checks == []
    assert ModuleRegistration(action="acme.crowded", params_schema=crowded(MAX_SUBSCHEMAS)).params_schema
    assert meta_checks == [1]


def test_a_module_spec_past_the_bound_is_refused_and_a_stored_one_is_not_checked_again(
    meta_checks: list[int],
) -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_SUBSCHEMAS:,} are allowed"):
        ModuleSpec("acme.crowded", "", crowded(10_000), remote=True)
    # Registered before the bound (or any time: it was checked then, and a registration is never updated).
    stored = ModuleSpec("acme.crowded", "", crowded(10_000), remote=True, stored=True)
    assert stored.params_schema["type"] == "object"
    assert meta_checks == []
