# intent_ref: platform.registry
"""A plan's walk below its `intent.run` steps: each intent validated once per plan, one descendant budget per plan.

Before, every `intent.run` step walked its child's intents afresh (up to 64 validations each), so a plan's work grew
with steps x 64 validations; the bound is proven by counting validations, never by timing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.registry import service
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


def test_a_plan_validates_each_intent_below_its_steps_once(api: ApiHarness, validations: list[str]) -> None:
    """Five steps run two children that both run the same three leaves: the plan validates the root, each child
    and each leaf once (6), not every step's whole walk again (1 + 5 x 4 = 21)."""
    tenant = "plan-once"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    for leaf in range(3):
        _intent(api, tenant, f"leaf-{leaf}", {"id": "pause", "action": "wait", "seconds": 1})
    for fan in range(2):
        _intent(api, tenant, f"fan-{fan}", *(_runs(f"to-{leaf}", f"leaf-{leaf}") for leaf in range(3)))
    root = _intent(api, tenant, "root", *(_runs(f"s{step}", f"fan-{step % 2}") for step in range(5)))
    validations.clear()

    assert _reasons(api, tenant, root) == {f"s{step}": "allowed" for step in range(5)}
    assert sorted(validations) == sorted(["root", "fan-0", "fan-1", "leaf-0", "leaf-1", "leaf-2"])


def test_the_descendant_budget_is_one_for_the_whole_plan(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, validations: list[str]
) -> None:
    """Two children with two intents below each fit a per-walk bound of 3 each (the child and its two), but not a
    plan's budget of 3 in all: the step needing more answers `too_many_descendants`, its child not even validated;
    a step whose child was walked keeps its verdict."""
    tenant = "plan-budget"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    for leaf in ("a1", "a2", "b1", "b2"):
        _intent(api, tenant, leaf, {"id": "pause", "action": "wait", "seconds": 1})
    _intent(api, tenant, "fan-a", _runs("one", "a1"), _runs("two", "a2"))
    _intent(api, tenant, "fan-b", _runs("one", "b1"), _runs("two", "b2"))
    root = _intent(api, tenant, "root", _runs("a", "fan-a"), _runs("b", "fan-b"), _runs("again", "fan-a"))
    monkeypatch.setattr(service, "MAX_PLANNED_DESCENDANTS", 3)
    validations.clear()

    assert _reasons(api, tenant, root) == {"a": "allowed", "b": "too_many_descendants", "again": "allowed"}
    assert "fan-b" not in validations and "b1" not in validations and "b2" not in validations
    assert len(validations) == len(set(validations))
    # Either child alone fits the budget of its own plan.
    assert _reasons(api, tenant, _intent(api, tenant, "only-b", _runs("b", "fan-b"))) == {"b": "allowed"}
