# intent_ref: platform.registry
"""A plan's walk below its `intent.run` steps: each intent's steps read once per plan, one descendant budget per plan.

Before, every `intent.run` step walked its child's intents afresh (up to 64 validations each), so a plan's work grew
with steps x 64 validations; then each intent below was validated once, at the cost of a save each (seconds for a
large input schema). Only the planned intent is validated now; the bounds are proven by counting validations,
reads and meta-schema checks, never by timing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.registry import problems, service
from shared.registry.model import Step
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR, DEPLOYER = ["Intent.Author"], ["Intent.Deployer"]
INTENTS = "/api/v1/intents"
ROOMY = {"requests_per_minute": 100_000, "burst": 10_000}


def _runs(step_id: str, intent: str) -> dict[str, Any]:
    return {"id": step_id, "action": "intent.run", "intent": intent}


def _intent(api: ApiHarness, tenant: str, name: str, *steps: dict[str, Any]) -> str:
    body = {"name": name, "definition": {"target": "staging", "steps": list(steps)}}
    response = api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _reasons(api: ApiHarness, tenant: str, intent_id: str) -> dict[str, str]:
    response = api.client.post(f"{INTENTS}/{intent_id}/plan", headers=api.headers(tenant, DEPLOYER))
    assert response.status_code == 200, response.text
    return {step["id"]: step["authorization"]["reason"] for step in response.json()["steps"]}


@pytest.fixture()
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the intents `service.check` validates from here on, in order."""
    seen: list[str] = []
    original: Callable[..., service.Checked] = service.check

    def counting(conn: Any, kind: Any, doc: Any, **kwargs: Any) -> service.Checked:
        seen.append(doc["name"] if isinstance(doc, dict) else "?")
        return original(conn, kind, doc, **kwargs)

    monkeypatch.setattr(service, "check", counting)
    return seen


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the intents whose stored steps a plan's walk reads from here on, in order."""
    seen: list[str] = []
    original: Callable[[Any, service.Item], tuple[Step, ...]] = service.stored_steps

    def counting(conn: Any, item: service.Item) -> tuple[Step, ...]:
        seen.append(item.head.name)
        return original(conn, item)

    monkeypatch.setattr(service, "stored_steps", counting)
    return seen


def test_a_plan_reads_each_intent_below_its_steps_once(
    api: ApiHarness, validations: list[str], reads: list[str]
) -> None:
    """Five steps run two children that both run the same three leaves: the plan validates the root only, and reads
    the steps of each child and each leaf once (5), not every step's whole walk again (5 x 4 = 20)."""
    tenant = "plan-once"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    for leaf in range(3):
        _intent(api, tenant, f"leaf-{leaf}", {"id": "pause", "action": "wait", "seconds": 1})
    for fan in range(2):
        _intent(api, tenant, f"fan-{fan}", *(_runs(f"to-{leaf}", f"leaf-{leaf}") for leaf in range(3)))
    root = _intent(api, tenant, "root", *(_runs(f"s{step}", f"fan-{step % 2}") for step in range(5)))
    validations.clear()

    assert _reasons(api, tenant, root) == {f"s{step}": "allowed" for step in range(5)}
    assert validations == ["root"]
    assert sorted(reads) == sorted(["fan-0", "fan-1", "leaf-0", "leaf-1", "leaf-2"])


def test_the_descendant_budget_is_one_for_the_whole_plan(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, reads: list[str]
) -> None:
    """Two children with two intents below each fit a per-walk bound of 3 each (the child and its two), but not a
    plan's budget of 3 in all: the step needing more answers `too_many_descendants`, its child not even read; a
    step whose child was walked keeps its verdict."""
    tenant = "plan-budget"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    for leaf in ("a1", "a2", "b1", "b2"):
        _intent(api, tenant, leaf, {"id": "pause", "action": "wait", "seconds": 1})
    _intent(api, tenant, "fan-a", _runs("one", "a1"), _runs("two", "a2"))
    _intent(api, tenant, "fan-b", _runs("one", "b1"), _runs("two", "b2"))
    root = _intent(api, tenant, "root", _runs("a", "fan-a"), _runs("b", "fan-b"), _runs("again", "fan-a"))
    monkeypatch.setattr(service, "MAX_PLANNED_DESCENDANTS", 3)
    reads.clear()

    assert _reasons(api, tenant, root) == {"a": "allowed", "b": "too_many_descendants", "again": "allowed"}
    assert "fan-b" not in reads and "b1" not in reads and "b2" not in reads
    assert len(reads) == len(set(reads))
    # Either child alone fits the budget of its own plan.
    assert _reasons(api, tenant, _intent(api, tenant, "only-b", _runs("b", "fan-b"))) == {"b": "allowed"}


@pytest.fixture()
def meta_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a schema is checked against the meta-schema from here on (one entry each)."""
    seen: list[int] = []
    original = problems.Draft202012Validator

    class Counting:
        META_SCHEMA = original.META_SCHEMA

        def __new__(cls, schema: Any, *args: Any, **kwargs: Any) -> Any:
            if schema is original.META_SCHEMA:
                seen.append(1)
            return original(schema, *args, **kwargs)

    monkeypatch.setattr(problems, "Draft202012Validator", Counting)
    return seen


def test_a_plan_does_not_validate_the_intents_below_its_steps_again(
    api: ApiHarness, validations: list[str], reads: list[str], meta_checks: list[int]
) -> None:
    """Ten children, each with an input schema of 1,000 subschemas (a save's meta-schema check of it costs about a
    third of a second): the plan validates the root alone and checks none of their schemas, where it validated
    each child again, meta-schema check included (11 validations, 10 checks)."""
    tenant = "plan-costly"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    costly = {"type": "object", "allOf": [{}] * 999}
    for child in range(10):
        body = {
            "name": f"costly-{child}",
            "definition": {
                "target": "staging",
                "inputs": costly,
                "steps": [{"id": "p", "action": "wait", "seconds": 1}],
            },
        }
        response = api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR))
        assert response.status_code == 201, response.text
    root = _intent(api, tenant, "root", *(_runs(f"s{child}", f"costly-{child}") for child in range(10)))
    validations.clear()
    meta_checks.clear()

    assert _reasons(api, tenant, root) == {f"s{child}": "allowed" for child in range(10)}
    assert validations == ["root"]
    assert meta_checks == []
    assert sorted(reads) == sorted(f"costly-{child}" for child in range(10))


def test_a_plan_follows_a_declaration_through_its_pinned_blueprint(api: ApiHarness, reads: list[str]) -> None:
    """A child that is a declaration runs its blueprint version's steps: the walk reads them from that version, so a
    production intent its blueprint runs is decided for the caller as the child's start will decide it."""
    tenant = "plan-declared"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    body = {
        "name": "prod",
        "definition": {"target": "production", "steps": [{"id": "p", "action": "wait", "seconds": 1}]},
    }
    assert api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR)).status_code == 201
    blueprint = {"name": "runs-prod", "definition": {"steps": [_runs("deep", "prod")]}}
    response = api.client.post("/api/v1/blueprints", json=blueprint, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    declared = {"name": "declared", "definition": {"blueprint": "runs-prod", "target": "staging"}}
    response = api.client.post(INTENTS, json=declared, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    root = _intent(api, tenant, "root", _runs("child", "declared"))

    assert _reasons(api, tenant, root) == {"child": "allowed"}  # a Deployer may start production intents
    response = api.client.post(f"{INTENTS}/{root}/plan", headers=api.headers(tenant, ["Intent.Executor"]))
    assert response.status_code == 200, response.text
    assert response.json()["steps"][0]["authorization"]["reason"] == "production_requires_deployer"
    assert "declared" in reads and "prod" in reads
