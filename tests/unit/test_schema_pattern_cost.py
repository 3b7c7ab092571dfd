# intent_ref: platform.registry
"""A tenant schema's regexes are charged for the work they do (ADR 0021, amended 2026-12-07): a search costs steps
in proportion to its subject's length and its pattern's compiled size, the same pattern applied to the same long
text again costs no second search, and a schema that repeats costly searches runs out of its budget, at save and
validate (`evaluate_tenant_schema`) and at start (`_input_problems`, which calls it) alike.

Searches are counted, not timed: before, the repeated pattern below made 1,000 searches of 15,000 characters
(31 s), each charged one step."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import re2  # type: ignore[import-untyped]  # the package ships no type information

from shared.engine.start import NoLongerValidError, _input_problems
from shared.registry import schemas
from shared.registry.schema_refs import SchemaEvaluation, evaluate_tenant_schema
from shared.registry.schemas import EvaluationBudgetExceeded, TenantSchemaValidator, evaluation_budget

PATTERN = "[ab]*a[ab]{300}c"
"""RE2's DFA cannot cache this one's states: each character steps hundreds of instructions (about 2 µs)."""
SEARCH_LIMIT = 100
"""Searches of one long text (1,000 characters or more) a test lets the evaluator make before it is stopped: the
unbounded evaluations make 256 to 1,000."""


def hostile_text(length: int = 15_000) -> str:
    """A string of `length` characters that PATTERN matches only at its end."""
    rng = random.Random(1)
    return "".join(rng.choice("ab") for _ in range(length - 302)) + "a" + "b" * 300 + "c"


def distinct(count: int) -> list[str]:
    """`count` different regexes, each as costly as PATTERN on hostile_text()."""
    return [f"{PATTERN}|z{index}" for index in range(count)]


class CountingRegexp:
    """A compiled regex whose searches are counted, failing the test past SEARCH_LIMIT of one long text."""

    def __init__(self, regexp: Any, searches: list[str]) -> None:
        self.regexp, self.searches = regexp, searches

    @property
    def programsize(self) -> int:
        """The compiled program's size, as RE2 reports it."""
        return int(self.regexp.programsize)

    def search(self, text: str) -> Any:
        """RE2's search, counted."""
        self.searches.append(text)
        if len(text) >= 1_000 and self.searches.count(text) > SEARCH_LIMIT:
            raise AssertionError(f"more than {SEARCH_LIMIT} regex searches")
        return self.regexp.search(text)


@pytest.fixture()
def searches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The texts the evaluator searched, in order."""
    made: list[str] = []
    original = schemas._compiled

    def counting(pattern: str) -> tuple[Any, str | None]:
        regexp, reason = original(pattern)
        return (None if regexp is None else CountingRegexp(regexp, made)), reason

    monkeypatch.setattr(schemas, "_compiled", counting)
    yield made


def inputs_schema(patterns: list[str]) -> dict[str, Any]:
    """An inputs schema applying each of `patterns` to the input `x`."""
    return {"type": "object", "properties": {"x": {"type": "string", "allOf": [{"pattern": p} for p in patterns]}}}


def test_a_search_is_charged_for_its_subjects_length_and_its_programs_size(searches: list[str]) -> None:
    text = hostile_text()
    size = int(re2.compile(PATTERN).programsize)
    assert size > 300
    with evaluation_budget(1_000_000) as budget:
        assert [*TenantSchemaValidator({"pattern": PATTERN}).iter_errors(text)] == []
    assert budget.spent >= len(text) * size // 512 > 8_000
    # A budget too small for the search refuses it before it is made.
    with evaluation_budget(1_000), pytest.raises(EvaluationBudgetExceeded):
        [*TenantSchemaValidator({"pattern": PATTERN}).iter_errors(text)]
    assert len(searches) == 1


def test_a_small_pattern_is_charged_a_step_for_every_sixteen_characters() -> None:
    with evaluation_budget(1_000_000) as budget:
        assert [*TenantSchemaValidator({"pattern": "^[a-z]*$"}).iter_errors("a" * 160_000)] == []
    assert budget.spent >= 10_000


def test_the_same_pattern_repeated_on_one_long_string_is_searched_once(searches: list[str]) -> None:
    text = hostile_text()
    schema = inputs_schema([PATTERN] * 1_000)
    assert evaluate_tenant_schema(schema, {"x": text}) == SchemaEvaluation()
    assert searches == [text]
    # The start path evaluates through the same function.
    searches.clear()
    assert _input_problems(schema, {"x": text}) == []
    assert searches == [text]
    # Reached through references (as many as a schema may hold), the same.
    searches.clear()
    referred = {
        "type": "object",
        "$defs": {"x": {"pattern": PATTERN}},
        "properties": {"x": {"type": "string", "allOf": [{"$ref": "#/$defs/x"}] * 64}},
    }
    assert evaluate_tenant_schema(referred, {"x": text}) == SchemaEvaluation()
    assert searches == [text]


def test_distinct_costly_patterns_on_one_long_string_run_out_of_the_budget(searches: list[str]) -> None:
    schema = inputs_schema(distinct(256))
    refused = evaluate_tenant_schema(schema, {"x": hostile_text()})
    assert refused.unusable is not None and "steps" in refused.unusable
    assert 1 <= len(searches) <= 12  # 100,000 steps, about 9,000 a search
    searches.clear()
    with pytest.raises(NoLongerValidError, match="steps"):
        _input_problems(schema, {"x": hostile_text()})
    assert 1 <= len(searches) <= 12


@pytest.mark.parametrize(
    "keyword",
    ["patternProperties", "additionalProperties", "unevaluatedProperties"],
)
def test_matching_a_long_key_is_charged_too(searches: list[str], keyword: str) -> None:
    patterns: dict[str, Any] = {pattern: {} for pattern in distinct(256)}
    # The keyword under test comes first, so it is the one that makes the searches; the key matches none of them, so
    # each is searched in full.
    schema: dict[str, Any] = {keyword: {"type": "object"} if keyword != "patternProperties" else patterns}
    schema["patternProperties"] = patterns
    refused = evaluate_tenant_schema(schema, {hostile_text()[:-1]: 1})
    assert refused.unusable is not None and "steps" in refused.unusable
    assert 1 <= len(searches) <= 12


def test_short_keys_under_many_patterns_stay_within_the_budget() -> None:
    # 256 patterns by 300 keys: 153,600 searches of a few characters each, which cost less than a step.
    patterns: dict[str, Any] = {f"^p{i}\\d*$": {} for i in range(256)}
    schema = {"type": "object", "patternProperties": patterns, "additionalProperties": False}
    assert evaluate_tenant_schema(schema, {f"p{i}": 0 for i in range(300)}) == SchemaEvaluation()


def test_one_simple_pattern_on_a_megabyte_input_still_starts() -> None:
    schema = {"type": "object", "properties": {"blob": {"type": "string", "pattern": "^[A-Za-z0-9+/=]*$"}}}
    assert _input_problems(schema, {"blob": "QUJD" * 250_000}) == []
