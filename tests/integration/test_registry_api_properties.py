# intent_ref: platform.registry
"""Property: every definition the validator accepts round-trips through the API unchanged and plans without error."""

from __future__ import annotations

import copy
import itertools
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shared.policy.facts import TenantFacts
from shared.registry.plan import plan_hash
from shared.registry.validation import unshown_text_problems, validate_definition
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import AUTHOR, DEPLOYER, INTENTS, MODULES, READER, provision
from tests.unit.test_registry_validation import CATALOG

pytestmark = pytest.mark.integration

TENANT = "property"
# Postgres text and jsonb cannot hold NUL or unpaired surrogates, and integer literals beyond a bigint are not
# accepted JSON either; the API refuses them (tests/security/test_accepted_json.py). Large floats are generated.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)


@st.composite
def steps(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 6))
    explicit: list[str] = []
    result = []
    for index in range(count):
        kind = draw(st.sampled_from(["wait", "http.request", "event.emit", "artifact.write"]))
        params: dict[str, Any] = {
            "wait": lambda: {"seconds": draw(st.integers(1, 3600))},
            "http.request": lambda: {
                "url": f"https://example.test/{draw(st.integers(0, 9))}",
                "method": draw(st.sampled_from(["GET", "POST", "DELETE"])),
            },
            "event.emit": lambda: {
                "type": draw(st.from_regex(r"\A[a-z]{1,8}\.[a-z]{1,8}\Z")),
                "data": draw(st.dictionaries(TEXT, JSON, max_size=3)),
            },
            "artifact.write": lambda: {"name": draw(st.from_regex(r"\A[a-z][a-z0-9/]{0,10}\Z")), "content": draw(JSON)},
        }[kind]()
        step: dict[str, Any] = {"action": kind}
        if draw(st.booleans()):
            step_id = f"s{index}"
            step["id"] = step_id
        else:
            step_id = None
        # The seed's style (parameters beside the action) and the normalized one (in `params`) both validate.
        if draw(st.booleans()):
            step.update(params)
        else:
            step["params"] = params
        if explicit and draw(st.booleans()):
            step["depends_on"] = draw(st.lists(st.sampled_from(explicit), unique=True, max_size=3))
        if draw(st.booleans()):
            step["retry"] = {
                "max_attempts": draw(st.integers(1, 10)),
                "initial_interval_s": draw(st.floats(0.5, 60)),
                "backoff": draw(st.floats(1, 4)),
            }
        if draw(st.booleans()):
            step["timeout_s"] = draw(st.integers(1, 86400))
        if step_id is not None:
            explicit.append(step_id)
        result.append(step)
    return result


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    definition: dict[str, Any] = {"steps": draw(steps())}
    target = draw(st.sampled_from([None, "staging", "production"]))
    if target is not None:
        definition["target"] = target
    if draw(st.booleans()):
        definition["inputs"] = {"type": "object", "properties": {"version": {"type": "string"}}}
    return {
        "description": draw(TEXT),
        "labels": draw(st.dictionaries(st.from_regex(r"\A[a-z0-9]{1,8}\Z"), TEXT, max_size=3)),
        "definition": definition,
    }


_names = itertools.count()


def json_value(value: Any) -> Any:
    """`value` compared as JSON compares: numbers by their decimal value, whether Python parsed an int or a float
    (jsonb answers 1e16 as 10000000000000000)."""
    if isinstance(value, float):
        return Decimal(repr(value)).normalize()
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value).normalize()
    if isinstance(value, dict):
        return {key: json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_value(item) for item in value]
    return value


@pytest.fixture(scope="module", autouse=True)
def _tenant(api: ApiHarness) -> None:
    provision(api, TENANT)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=definitions())
def test_accepted_definitions_round_trip_and_plan(api: ApiHarness, body: dict[str, Any]) -> None:
    body = {"name": f"prop-{next(_names)}-{uuid.uuid4().hex[:6]}", **body}
    facts = TenantFacts(api.tenants[TENANT].id, "active", frozenset({"staging", "production"}), frozenset(MODULES))
    result = validate_definition(copy.deepcopy(body), catalog=CATALOG, tenant=facts)
    assume(result.ok)
    assert result.normalized is not None and result.plan is not None

    validated = api.client.post(f"{INTENTS}/validate", json=body, headers=api.headers(TENANT, AUTHOR))
    unshown = [problem.pointer for problem in unshown_text_problems(body)]
    if unshown:
        # New free text is held to the rule too (a stored version is not): refused, naming each field, nothing saved.
        assert validated.status_code == 422, validated.text
        assert [error["pointer"] for error in validated.json()["errors"]] == unshown
        refused = api.client.post(INTENTS, json=body, headers=api.headers(TENANT, AUTHOR))
        assert refused.status_code == 422, refused.text
        return
    assert validated.status_code == 200, validated.text
    created = api.client.post(INTENTS, json=body, headers=api.headers(TENANT, AUTHOR))
    assert created.status_code == 201, created.text
    fetched = api.client.get(f"{INTENTS}/{created.json()['id']}", headers=api.headers(TENANT, READER))
    saved = fetched.json()
    assert (saved["name"], saved["description"], saved["labels"]) == (body["name"], body["description"], body["labels"])
    assert json_value(saved["definition"]) == json_value(result.normalized)
    assert saved == created.json() and validated.json()["definition"] == saved["definition"]

    plan = api.client.post(f"{INTENTS}/{saved['id']}/plan", headers=api.headers(TENANT, DEPLOYER))
    assert plan.status_code == 200, plan.text
    assert plan.json()["levels"] == result.plan
    # What /validate promises is what /plan (and so an execute request) holds to.
    assert plan.json()["plan_hash"] == validated.json()["plan_hash"] == plan_hash(saved["definition"], None)

    # The normalized form is a fixed point: sending the GET back stores the same definition.
    again = api.client.put(
        f"{INTENTS}/{saved['id']}",
        json=saved,
        headers={**api.headers(TENANT, AUTHOR), "If-Match": fetched.headers["etag"]},
    )
    assert again.status_code == 200, again.text
    assert again.json()["definition"] == saved["definition"] and again.json()["version"] == 2
