# intent_ref: platform.registry
"""Save-time checks of the engine's own actions (ADR 0014): `intent.run` with `wait: false` is refused (the step
always waits for its child), and a `wait` whose literal time is past its step's timeout is refused naming the bound."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.registry import service
from shared.registry.validation import Limits
from tests.unit.test_registry_validation import CATALOG, errors, intent, tenant, validate

DAY = 24 * 3600


def test_an_intent_run_with_wait_false_is_refused_at_its_flag() -> None:
    run = {"action": "intent.run", "intent": "other"}
    assert errors(intent({**run, "wait": False})) == [("/definition/steps/0/wait", "unsupported_wait")]
    [problem] = validate(intent({"action": "intent.run", "params": {"intent": "other", "wait": False}})).errors
    assert problem.pointer == "/definition/steps/0/params/wait"
    assert "wait: false is not supported" in problem.message
    assert errors(intent({**run, "wait": True})) == []
    assert errors(intent(run)) == []


def test_a_wait_of_more_seconds_than_its_timeout_is_refused_naming_the_limit() -> None:
    [problem] = validate(intent({"action": "wait", "seconds": 120, "timeout_s": 60})).errors
    assert (problem.pointer, problem.code) == ("/definition/steps/0/seconds", "wait_past_timeout")
    assert "past the step's timeout of 60 s" in problem.message
    assert errors(intent({"action": "wait", "seconds": 60, "timeout_s": 60})) == []
    assert errors(intent({"action": "wait", "seconds": 29 * DAY})) == []  # the module's 30 days
    assert errors(intent({"action": "wait", "seconds": "${inputs.s}", "timeout_s": 60})) == []  # checked at run time


def test_a_wait_until_further_than_its_timeout_is_refused_naming_the_limit() -> None:
    now = datetime.now(UTC)
    far = (now + timedelta(days=75)).strftime("%Y-%m-%dT%H:%M:%SZ")
    [problem] = validate(intent({"action": "wait", "until": far})).errors
    assert (problem.pointer, problem.code) == ("/definition/steps/0/until", "wait_past_timeout")
    assert f"past the step's timeout of {30 * DAY} s" in problem.message
    near = (now + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert errors(intent({"action": "wait", "until": near})) == []
    assert errors(intent({"action": "wait", "params": {"until": near}, "timeout_s": 3600})) == [
        ("/definition/steps/0/params/until", "wait_past_timeout")
    ]
    assert errors(intent({"action": "wait", "until": "${inputs.at}", "timeout_s": 60})) == []  # checked at run time


def test_an_intent_run_whose_wait_a_reference_gives_is_refused_at_its_flag() -> None:
    """The engine never reads `wait`: an input that came to false would be ignored as silently as a literal false."""
    run = {"action": "intent.run", "intent": "other"}
    inputs = {"type": "object", "properties": {"w": {"type": "boolean"}}}
    assert errors(intent({**run, "wait": "${inputs.w}"}, inputs=inputs)) == [
        ("/definition/steps/0/wait", "unsupported_wait")
    ]
    assert errors(
        intent({"action": "intent.run", "params": {"intent": "other", "wait": "${inputs.w}"}}, inputs=inputs)
    ) == [("/definition/steps/0/params/wait", "unsupported_wait")]
    [problem] = validate(intent({**run, "wait": "${inputs.w}"}, inputs=inputs)).errors
    assert "wait: a value other than a literal true is not supported" in problem.message
    assert errors(intent({**run, "wait": True}, inputs=inputs)) == []


def _plan_check(doc: dict[str, Any]) -> service.PendingCheck:
    reads = service.CheckReads(CATALOG, None, None, [])
    return service.PendingCheck("intent", doc, reads, version=1, saving=False, item_id=uuid.uuid4())


def test_a_plans_refusal_of_a_wait_until_is_not_kept_as_the_clock_moves_it_in() -> None:
    """A stored version's check is kept per process (a version never changes), but `wait_past_timeout` on a literal
    `until` is measured from the check: kept, the version stayed refused after its `until` had come near enough."""
    facts, limits = tenant(), Limits()
    far = (datetime.now(UTC) + timedelta(days=75)).strftime("%Y-%m-%dT%H:%M:%SZ")
    clocked = _plan_check(intent({"action": "wait", "until": far}))
    made = service.check_outside(clocked, tenant=facts, limits=limits)
    assert [e.code for e in made.evaluated.errors] == ["wait_past_timeout"]
    assert service.cached_outside(clocked, tenant=facts, limits=limits) is None
    refused = _plan_check(intent({"action": "intent.run", "intent": "other", "wait": False}))
    service.check_outside(refused, tenant=facts, limits=limits)
    kept = service.cached_outside(refused, tenant=facts, limits=limits)  # a refusal the clock cannot change is kept
    assert kept is not None and [e.code for e in kept.evaluated.errors] == ["unsupported_wait"]
