# intent_ref: platform.registry
"""Registry requests whose work must stay bounded by their input, not by keys x leaves or steps x validations.

A diff lists a bounded number of changes and never repeats a long key in every leaf's path; problem ordering builds
nothing per node of the request body; a plan's `intent.run` children spend the plan's one descendant budget. Each
bound is proven by the shape of what is built or answered (entries, sizes, intents read), never by timing.
"""

from __future__ import annotations

import copy
import json
import tracemalloc
from typing import Any

import pytest

from shared.registry import service
from shared.registry.diff import MAX_LISTED_CHANGES, diff_definitions
from shared.registry.problems import document_order
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_plan_descendant_budget import reads  # noqa: F401  # the fixture
from tests.integration.test_registry_api import AUTHOR, BLUEPRINTS, INTENTS, READER, ROOMY, provision, put

pytestmark = pytest.mark.integration

DEPLOYER = ["Intent.Deployer"]
LONG_KEY = "k" * 20_000
LEAVES = 2_000


def _declaration(value: int, key: str = LONG_KEY) -> dict[str, Any]:
    """A declaration whose extra definition field holds many small leaves under one key."""
    return {
        "name": "decl",
        "definition": {"blueprint": "bp", "target": "staging", key: {f"a{i}": value for i in range(LEAVES)}},
    }


def _changes_listed(diff: dict[str, Any]) -> int:
    return len(diff["fields_changed"]) + sum(len(step["changes"]) for step in diff["steps_changed"])


def test_a_diff_compares_a_long_keyed_object_as_one_value(api: ApiHarness) -> None:
    """A 20,000-character key above 2,000 changed leaves: one change at the key, not 2,000 paths repeating it, and
    the summary shows a shortened path."""
    tenant = provision(api, "amp-diff-long")
    blueprint = {"name": "bp", "definition": {"steps": [{"id": "only", "action": "wait", "seconds": 1}]}}
    response = api.client.post(BLUEPRINTS, json=blueprint, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    response = api.client.post(INTENTS, json=_declaration(0), headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    item = response.json()["id"]
    assert put(api, tenant, item, _declaration(1)).status_code == 200

    response = api.client.get(f"{INTENTS}/{item}/diff?from=1&to=2", headers=api.headers(tenant, READER))
    assert response.status_code == 200, response.text
    diff = response.json()
    assert [change["path"] for change in diff["fields_changed"]] == [f"/{LONG_KEY}"]
    assert diff["changes_left_out"] == 0
    assert len(diff["summary"]) < 1_000
    # The answer holds the two values once each, not the key once per leaf.
    assert len(response.content) < 3 * len(json.dumps(_declaration(0)))


def test_a_diff_lists_at_most_its_budget_and_counts_the_rest(api: ApiHarness) -> None:
    """2,000 changed leaves under a short key: the diff lists its budget of changes and says how many more."""
    tenant = provision(api, "amp-diff-many")
    blueprint = {"name": "bp", "definition": {"steps": [{"id": "only", "action": "wait", "seconds": 1}]}}
    response = api.client.post(BLUEPRINTS, json=blueprint, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    response = api.client.post(INTENTS, json=_declaration(0, "extra"), headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    item = response.json()["id"]
    assert put(api, tenant, item, _declaration(1, "extra")).status_code == 200

    diff = api.client.get(f"{INTENTS}/{item}/diff?from=1&to=2", headers=api.headers(tenant, READER)).json()
    assert _changes_listed(diff) == MAX_LISTED_CHANGES
    assert diff["changes_left_out"] == LEAVES - MAX_LISTED_CHANGES
    assert f"{LEAVES - MAX_LISTED_CHANGES} more changes are not listed" in diff["summary"]


def test_steps_params_share_the_diff_budget_and_the_path_bound() -> None:
    """Steps' params go through the same comparison: a long key is one change, many leaves spend one budget."""
    old: dict[str, Any] = {
        "steps": [
            {"id": "a", "action": "x", "params": {LONG_KEY: {f"a{i}": 0 for i in range(LEAVES)}}},
            {"id": "b", "action": "x", "params": {f"p{i}": 0 for i in range(LEAVES)}},
            {"id": "c", "action": "x", "params": {f"p{i}": 0 for i in range(LEAVES)}},
        ]
    }
    new = copy.deepcopy(old)
    for step in new["steps"]:
        for name, value in step["params"].items():
            step["params"][name] = {key: 1 for key in value} if isinstance(value, dict) else 1

    diff = diff_definitions(old, new)
    by_step = {step.id: step.changes for step in diff.steps_changed}
    assert [change.path for change in by_step["a"]] == [f"/params/{LONG_KEY}"]
    assert len(by_step["b"]) == MAX_LISTED_CHANGES - 1 and by_step["c"] == ()
    assert diff.changes_left_out == 2 * LEAVES - (MAX_LISTED_CHANGES - 1)
    assert len(diff.summary) < 2_000


def test_ordering_problems_builds_nothing_per_node_of_the_body() -> None:
    """A long key above many children: sorting problems by document order follows each problem's pointer, it does
    not keep a pointer per node (2,000 x 20,000 characters)."""
    body = {"name": "x", "junk": {LONG_KEY: {f"a{i}": 0 for i in range(LEAVES)}}, "definition": {"steps": []}}
    pointers = ["/definition/steps", f"/junk/{LONG_KEY}/a{LEAVES - 1}", "/junk", "/name/missing", "/name", ""]

    tracemalloc.start()
    try:
        ordered = sorted(pointers, key=document_order(body))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert ordered == ["", "/name", "/name/missing", "/junk", f"/junk/{LONG_KEY}/a{LEAVES - 1}", "/definition/steps"]
    # Linear in the body (one index of the keys of an object followed); a pointer per node was 40 MB here.
    assert peak < 10 * len(json.dumps(body))


def test_the_validate_route_reports_problems_in_document_order(api: ApiHarness) -> None:
    """The same body through the API: its problems come back in the order they appear in it."""
    tenant = provision(api, "amp-order")
    body = {
        "name": "x",
        "description": "d" * 4_001,
        "junk": {LONG_KEY: {f"a{i}": 0 for i in range(LEAVES)}},
        "definition": {"target": "staging", "steps": [{"id": "only", "action": "wait", "seconds": 1}]},
    }
    response = api.client.post(f"{INTENTS}/validate", json=body, headers=api.headers(tenant, AUTHOR))
    pointers = [error["pointer"] for error in response.json()["errors"]]
    assert pointers == ["/description", "/junk"]


def test_a_plans_children_spend_its_descendant_budget(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, reads: list[str]
) -> None:
    """Eight steps pinning eight versions of one intent: with a budget of 3 the plan reads three of them, and the
    steps past it answer `too_many_descendants`; a step pinning a version already walked keeps its verdict."""
    tenant = "amp-plan"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    child: dict[str, Any] = {
        "name": "child",
        "definition": {"target": "staging", "steps": [{"id": "p", "action": "wait", "seconds": 1}]},
    }
    response = api.client.post(INTENTS, json=child, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    child_id = response.json()["id"]
    for seconds in range(2, 9):
        child["definition"]["steps"][0]["seconds"] = seconds
        assert put(api, tenant, child_id, child).status_code == 200
    steps = [{"id": f"v{n}", "action": "intent.run", "intent": "child", "version": n} for n in range(1, 9)]
    steps.append({"id": "again", "action": "intent.run", "intent": "child", "version": 1})
    root = {"name": "root", "definition": {"target": "staging", "steps": steps}}
    response = api.client.post(INTENTS, json=root, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    monkeypatch.setattr(service, "MAX_PLANNED_DESCENDANTS", 3)
    reads.clear()

    response = api.client.post(f"{INTENTS}/{response.json()['id']}/plan", headers=api.headers(tenant, DEPLOYER))
    assert response.status_code == 200, response.text
    reasons = {step["id"]: step["authorization"]["reason"] for step in response.json()["steps"]}
    assert reasons == {
        **{f"v{n}": "allowed" for n in range(1, 4)},
        **{f"v{n}": "too_many_descendants" for n in range(4, 9)},
        "again": "allowed",
    }
    assert reads.count("child") == 3
