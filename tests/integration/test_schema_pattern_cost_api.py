# intent_ref: platform.registry
"""A blueprint's inputs schema that repeats a costly regex, through the real app (ADR 0021, amended 2026-12-07): at
validate and at start the same pattern on the same input is searched once, and distinct costly patterns on a long
input run out of the evaluation's budget after a few searches instead of holding a worker for minutes. Many short
keys under many patterns run out likewise, patterns compiling to huge programs are refused at save, a long
unexpected key is reported without being searched again, a Unicode free text and a thousand people's names in
Unicode classes are accepted, and emoji are charged for their UTF-8 bytes. A class matching nothing in Latin-1 is
charged for its repetitions, and an input too costly to check is the start's invalid input (422, at `/input`).

Before, the validate request below (under 16 KiB, so it takes no check-gate slot) searched the 15,000-character
input 1,000 times: 31 s of CPU. Searches are counted, not timed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.api.durable import get_durable_client
from shared.registry import schemas
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.unit.test_schema_pattern_cost import PATTERN, CountingRegexp, distinct, hostile_text

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Executor", "Intent.Reader"]
ROOMY = {"requests_per_minute": 100_000, "burst": 10_000}
INTENTS = "/api/v1/intents"
BLUEPRINTS = "/api/v1/blueprints"
SHORT = "a" + "b" * 300 + "c"
"""An input every pattern here matches, short enough to save a declaration with."""


class RecordingClient:
    """The Durable client the execute route starts orchestrations with; records what it was asked to start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def start_new(self, _name: str, instance_id: str, _input: Any) -> str:
        self.started.append(instance_id)
        return instance_id


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("pattern-cost", quotas=ROOMY, allowed_modules=["wait", "intent"])


@pytest.fixture()
def durable(api: ApiHarness) -> Iterator[RecordingClient]:
    client = RecordingClient()
    app: Any = api.client.app
    app.dependency_overrides[get_durable_client] = lambda: client
    yield client
    app.dependency_overrides.pop(get_durable_client, None)


def counted_searches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the texts the app's schema evaluations search (failing the test past 100 of one long text)."""
    made: list[str] = []
    original = schemas._compiled

    def counting(pattern: str) -> tuple[Any, str | None]:
        regexp, reason = original(pattern)
        return (None if regexp is None else CountingRegexp(regexp, made)), reason

    monkeypatch.setattr(schemas, "_compiled", counting)
    return made


def blueprint(api: ApiHarness, name: str, patterns: list[str]) -> None:
    """A blueprint whose input `x` must match every one of `patterns`."""
    inputs = {"type": "object", "properties": {"x": {"type": "string", "allOf": [{"pattern": p} for p in patterns]}}}
    body = {"name": name, "definition": {"inputs": inputs, "steps": [{"id": "only", "action": "wait", "seconds": 1}]}}
    response = api.client.post(BLUEPRINTS, json=body, headers=api.headers("pattern-cost", AUTHOR))
    assert response.status_code == 201, response.text


def declaration(name: str, bp: str, x: str) -> dict[str, Any]:
    return {"name": name, "definition": {"blueprint": bp, "target": "staging", "x": x}}


def validate(api: ApiHarness, body: dict[str, Any]) -> Any:
    return api.client.post(f"{INTENTS}/validate", json=body, headers=api.headers("pattern-cost", AUTHOR))


def declared(api: ApiHarness, name: str, bp: str) -> str:
    """A saved declaration of blueprint `bp` with a short input; returns its id."""
    response = api.client.post(INTENTS, json=declaration(name, bp, SHORT), headers=api.headers("pattern-cost", AUTHOR))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def execute(api: ApiHarness, intent_id: str, x: str) -> Any:
    headers = api.headers("pattern-cost", AUTHOR)
    return api.client.post(f"{INTENTS}/{intent_id}/execute", json={"input": {"x": x}}, headers=headers)


def test_one_pattern_repeated_a_thousand_times_is_searched_once_at_validate(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    blueprint(api, "repeated", [PATTERN] * 1_000)
    searches = counted_searches(monkeypatch)
    x = hostile_text(14_902)
    body = declaration("decl", "repeated", x)
    response = validate(api, body)
    assert response.status_code == 200, response.text
    assert response.json()["valid"] is True
    assert searches.count(x) == 1


def test_distinct_costly_patterns_are_refused_at_validate_after_a_few_searches(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    blueprint(api, "distinct", distinct(256))
    searches = counted_searches(monkeypatch)
    x = hostile_text(14_902)
    response = validate(api, declaration("decl", "distinct", x))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert [(error["pointer"], error["code"]) for error in errors] == [("/definition", "invalid_declaration")]
    assert "more steps than allowed" in errors[0]["detail"]
    assert 1 <= searches.count(x) <= 12


def test_at_start_the_repeated_pattern_is_searched_once_and_distinct_ones_run_out(
    api: ApiHarness, durable: RecordingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    blueprint(api, "start-repeated", [PATTERN] * 1_000)
    blueprint(api, "start-distinct", distinct(256))
    repeated, several = (
        declared(api, "start-repeated", "start-repeated"),
        declared(api, "start-distinct", "start-distinct"),
    )
    x = hostile_text(15_000)
    searches = counted_searches(monkeypatch)
    accepted = execute(api, repeated, x)
    assert accepted.status_code == 202, accepted.text
    assert searches.count(x) == 1 and len(durable.started) == 1

    before = api.table_snapshot("executions")
    refused = execute(api, several, x)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/invalid-input")
    [error] = refused.json()["errors"]
    assert error["pointer"] == "/input" and "input is too costly" in error["detail"]
    assert "more steps than allowed" in error["detail"]
    assert 1 <= searches.count(x) - 1 <= 12
    assert api.table_snapshot("executions") == before and len(durable.started) == 1


def test_at_start_a_class_with_no_latin1_member_is_charged_for_its_repetitions(
    api: ApiHarness, durable: RecordingClient
) -> None:
    # Weighed 32 before, 50,000 CJK characters under this 18-character pattern took 3 s at validate and 3 s at start,
    # and started.
    blueprint(api, "start-han", ["(?:\\p{Han}?){900}c"])
    intent_id = declared(api, "start-han", "start-han")
    before = api.table_snapshot("executions")
    refused = execute(api, intent_id, "\u4e2d" * 50_000 + "c")  # it matches: before, it started
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"].endswith("/invalid-input")
    assert [error["pointer"] for error in refused.json()["errors"]] == ["/input"]
    assert api.table_snapshot("executions") == before and durable.started == []


def blueprint_with(api: ApiHarness, name: str, inputs: dict[str, Any]) -> Any:
    """The answer to saving a blueprint of one step whose inputs schema is `inputs`."""
    body = {"name": name, "definition": {"inputs": inputs, "steps": [{"id": "only", "action": "wait", "seconds": 1}]}}
    return api.client.post(BLUEPRINTS, json=body, headers=api.headers("pattern-cost", AUTHOR))


def test_many_short_keys_under_many_patterns_are_refused_at_validate(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, each search of a short key was charged nothing: 17,000 keys by 256 patterns took 19.5 s, answered 200.
    inputs = {
        "type": "object",
        "patternProperties": {f"^p{i}x\\d*$": {} for i in range(256)},
        "additionalProperties": {},
    }
    saved = blueprint_with(api, "short-keys", inputs)
    assert saved.status_code == 201, saved.text
    searches = counted_searches(monkeypatch)
    keys = {f"k{i:07d}": 0 for i in range(2_000)}
    response = validate(api, {"name": "decl", "definition": {"blueprint": "short-keys", "target": "staging", **keys}})
    assert response.status_code == 422, response.text
    assert "more steps than allowed" in response.json()["errors"][0]["detail"]
    assert len(searches) <= 200_000  # of 1,024,000: five eighths of a step each


def test_patterns_compiling_to_huge_programs_are_refused_at_save(api: ApiHarness) -> None:
    # Before, 48 of these (1.9 KB) took 9.2 s of CPU and 320 MB kept for the process's life, and were saved.
    patterns = [f"[\\pL\\pN]{{400}}|z{i}" for i in range(48)]
    inputs = {"type": "object", "properties": {"x": {"type": "string", "allOf": [{"pattern": p} for p in patterns]}}}
    response = blueprint_with(api, "huge-programs", inputs)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    # Each is refused, and past 400,000 instructions in all the rest are not compiled (they are refused for that).
    assert errors[0]["pointer"] == "/definition/inputs"
    assert "compile to more than 400,000 instructions in all" in errors[0]["detail"]
    assert all(error["pointer"].startswith("/definition/inputs/properties/x/allOf/") for error in errors[1:])
    assert all("compiles to more than 100,000 instructions" in error["detail"] for error in errors[1:])
    assert 2 <= len(errors) <= 12


def test_an_unexpected_long_key_is_reported_without_searching_it_again(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, each of the 40 violations searched the key against the 5 patterns again, uncharged (5.2 s).
    closed = {
        "type": "object",
        "properties": {"target": {}},
        "patternProperties": {p: {} for p in distinct(5)},
        "additionalProperties": False,
    }
    saved = blueprint_with(api, "closed", {"allOf": [{"$ref": "#/$defs/closed"}] * 40, "$defs": {"closed": closed}})
    assert saved.status_code == 201, saved.text
    searches = counted_searches(monkeypatch)
    key = hostile_text(14_902)[:-1]
    response = validate(api, {"name": "decl", "definition": {"blueprint": "closed", "target": "staging", key: 1}})
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [error["code"] for error in errors] == ["invalid_declaration"]  # the 40 at one pointer are one
    assert "unexpected property" in errors[0]["detail"]
    assert searches.count(key) == 5


def test_free_text_in_unicode_classes_is_valid_at_validate(api: ApiHarness) -> None:
    # Weighed by its UTF-8 program (1,349 instructions) this 42 KB text was refused; it is searched in about 1 ms.
    inputs = {"type": "object", "properties": {"notes": {"type": "string", "pattern": "^[\\p{L}\\p{N}\\s.,'-]*$"}}}
    saved = blueprint_with(api, "notes", inputs)
    assert saved.status_code == 201, saved.text
    notes = "Zoë Ångström, résumé " * 2000
    response = validate(
        api, {"name": "decl", "definition": {"blueprint": "notes", "target": "staging", "notes": notes}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["valid"] is True


def test_many_names_in_a_unicode_class_are_valid_at_validate(api: ApiHarness) -> None:
    # Weighed by its UTF-8 program over 16 (4,800), each "Ångström" cost 225 steps: 300 people were refused (422).
    name = {"type": "string", "pattern": "^[\\p{L} '-]{1,64}$"}
    person = {"type": "object", "properties": {"first": name, "last": name}}
    inputs = {"type": "object", "properties": {"people": {"type": "array", "items": person}}}
    saved = blueprint_with(api, "people", inputs)
    assert saved.status_code == 201, saved.text
    people = [{"first": "Zoë", "last": "Ångström"}] * 1_000
    response = validate(
        api, {"name": "decl", "definition": {"blueprint": "people", "target": "staging", "people": people}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["valid"] is True


def test_costly_patterns_over_emoji_are_refused_at_validate_after_two_searches(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted in code points, 3,500 four-byte emoji were charged a quarter of their work: 50 such patterns made seven
    # searches of about 0.3 s each before the budget ran out (2 s at validate).
    blueprint(api, "emoji", [f"(?s)(?:.?){{{990 - index}}}c" for index in range(50)])
    searches = counted_searches(monkeypatch)
    x = "\U0001f600" * 3_500
    response = validate(api, declaration("decl", "emoji", x))
    assert response.status_code == 422, response.text
    assert "more steps than allowed" in response.json()["errors"][0]["detail"]
    assert 1 <= searches.count(x) <= 2
