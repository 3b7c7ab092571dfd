# intent_ref: platform.execution
"""Reducer rules 10 (ADR 0047): an attempt's timeout counts from its recorded start (the answer of the dispatch that
records it), not from the reduction that decided to start it; executions started under rules 9 replay into the
commands they recorded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared.engine import machine as m
from tests.unit.test_engine_machine import Recorded


def _timed_out(run: Recorded) -> list[str]:
    return [
        outcome.step_id
        for command in run.log
        if isinstance(command, m.CallActivity) and isinstance(command.input, m.RecordOutcomes)
        for outcome in command.input.outcomes
        if outcome.state == "timed_out"
    ]


def _slow_start(rules: int) -> Recorded:
    """A step of 5 s whose dispatch is answered 4 s after the run decided to start it (it waited in the task hub),
    then 2 s pass."""
    run = Recorded([{"id": "a", "action": "x", "timeout_s": 5, "depends_on": []}], rules=rules)
    run.now += timedelta(seconds=4)
    run.answer_all()
    run.tick(2)
    return run


def test_a_steps_timeout_counts_from_its_recorded_start_not_from_the_decision() -> None:
    run = _slow_start(10)
    assert _timed_out(run) == []  # 2 s of its 5 s have passed since its start was recorded
    assert run.state.flights["a"].deadline == run.now + timedelta(seconds=3)
    run.tick(3)
    assert _timed_out(run) == ["a"]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_under_rules_9_a_steps_timeout_counted_from_the_decision() -> None:
    run = _slow_start(9)
    assert _timed_out(run) == ["a"]  # 6 s after the decision, 2 s after its start
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_compensations_timeout_counts_from_its_recorded_start() -> None:
    steps: list[dict[str, Any]] = [
        {"id": "a", "action": "x", "depends_on": [], "compensate": {"action": "undo"}},
        {"id": "b", "action": "x", "depends_on": ["a"]},
    ]
    run = Recorded(steps, plan={"a": {"kind": "module", "compensate_timeout_s": 5}})
    run.answer_all()
    run.result("a", output="made")
    run.answer_all()
    run.result("b", ok=False)
    run.answer_all()  # b's failure starts a's compensation; its dispatch waits 4 s in the task hub
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert isinstance(dispatch.input, m.DispatchSteps)
    assert [(start.step_id, start.phase) for start in dispatch.input.starts] == [("a", m.Phase.COMPENSATE)]
    run.now += timedelta(seconds=4)
    run.answer(dispatch)
    run.tick(2)
    assert _timed_out(run) == []
    run.tick(3.5)
    assert _timed_out(run) == ["a"]


def test_a_retrys_attempt_counts_its_timeout_from_its_own_recorded_start() -> None:
    retry = {"max_attempts": 2, "initial_interval_s": 1, "backoff": 1}
    run = Recorded([{"id": "a", "action": "x", "timeout_s": 5, "retry": retry}])
    run.answer_all()
    run.result("a", ok=False)
    run.answer_all()  # the retry is recorded
    run.tick(1)  # attempt 2 decided; its dispatch is answered 4 s later
    run.now += timedelta(seconds=4)
    run.answer_all()
    assert run.state.flights["a"].attempt == 2
    assert run.state.flights["a"].deadline == run.now + timedelta(seconds=5)
    run.tick(2)
    assert _timed_out(run) == []
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_child_steps_timeout_counts_from_the_record_of_its_child() -> None:
    run = Recorded(
        [{"id": "kid", "action": "intent.run", "intent": "other", "timeout_s": 5}],
        plan={"kid": {"kind": "intent", "timeout_s": 5}},
    )
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.now += timedelta(seconds=4)
    run.answer(dispatch, {"status": "running", "children": {"kid": {"execution_id": "c-1", "input": {}}}})
    assert run.state.flights["kid"].stage is m.Stage.CHILD
    assert run.state.flights["kid"].deadline == run.now + timedelta(seconds=5)
    run.tick(2)
    assert _timed_out(run) == []
    run.tick(3.5)
    # Timed out: under rules 11 its child is told to cancel, and the timeout is recorded once the child has ended.
    assert run.state.flights["kid"].stage is m.Stage.STOPPING
    run.answer_all()
    run.send(m.ChildEnded("kid", 1, {"status": "cancelled", "error": "cancelled"}, False, run.now))
    assert _timed_out(run) == ["kid"]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state
