# intent_ref: platform.execution
"""Reducer rules 11 (ADR 0014): an `intent.run` attempt that times out ends when its child does (a child that
succeeded meanwhile is the step's success; a retry starts only after the child ended), and a `wait` whose time is past
its step's timeout fails as it starts; executions started under rules 10 replay into the commands they recorded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared.engine import machine as m
from tests.unit.test_engine_machine import T0, Recorded, starts

KID_PLAN = {"kid": {"kind": "intent", "timeout_s": 10}}
SUCCEEDED = {"status": "succeeded", "outputs": {"db": 1}}
CANCELLED = {"status": "cancelled", "error": "cancelled"}


def _kid(attempts: int = 1, rules: int = m.RULES) -> Recorded:
    """Step `kid` runs an intent with a 10 s timeout; its child c-1 has started; the timer fires after 11 s."""
    step: dict[str, Any] = {"id": "kid", "action": "intent.run", "intent": "other"}
    if attempts > 1:
        step["retry"] = {"max_attempts": attempts, "initial_interval_s": 1}
    run = Recorded([step], plan=KID_PLAN, rules=rules)
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(dispatch, {"status": "running", "children": {"kid": {"execution_id": "c-1", "input": {}}}})
    run.tick(11)
    return run


def _cancels(run: Recorded) -> list[Any]:
    return [c.input for c in run.log if isinstance(c, m.CallActivity) and c.name is m.Activity.CANCEL_CHILD]


def _outcomes(run: Recorded) -> list[tuple[str, int, bool, str | None]]:
    return [
        (o.step_id, o.attempt, o.ok, o.state)
        for c in run.log
        if isinstance(c, m.CallActivity) and isinstance(c.input, m.RecordOutcomes)
        for o in c.input.outcomes
    ]


def _dispatched(run: Recorded) -> list[tuple[str, str, int]]:
    return [
        start
        for c in run.log
        if isinstance(c, m.CallActivity) and isinstance(c.input, m.DispatchSteps)
        for start in starts(c)
    ]


def _settle(run: Recorded, step_s: float = 1) -> None:
    for _ in range(10):
        if run.complete is not None:
            return
        run.answer_all()
        run.tick(step_s)


def test_a_child_that_succeeds_after_its_steps_timeout_is_the_steps_success() -> None:
    run = _kid(attempts=2)
    assert _cancels(run) == [m.CancelChild(tenant_id="t-1", execution_id="e-1", child_execution_id="c-1")]
    assert _outcomes(run) == []  # nothing recorded yet: the step ends when the child does
    run.answer_all()
    run.tick(5)
    assert _dispatched(run) == [("kid", "run", 1)]
    run.send(m.ChildEnded("kid", 1, SUCCEEDED, False, run.now))
    assert _outcomes(run) == [("kid", 1, True, None)]
    _settle(run)
    assert _dispatched(run) == [("kid", "run", 1)]  # no attempt 2
    assert run.complete is not None and run.complete["status"] == "succeeded"
    assert run.complete["outputs"] == {"kid": {"execution_id": "c-1", "outputs": {"db": 1}}}
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_retry_of_a_timed_out_child_starts_only_after_that_child_ended() -> None:
    run = _kid(attempts=2)
    for _ in range(5):  # the retry pause (1 s) passes many times over while the child compensates
        run.answer_all()
        run.tick(1)
    assert ("kid", "run", 2) not in _dispatched(run)
    assert run.state.flights["kid"].stage is m.Stage.STOPPING
    run.send(m.ChildEnded("kid", 1, CANCELLED, False, run.now))
    assert _outcomes(run) == [("kid", 1, False, "timed_out")]
    (settle,) = run.activities(m.Activity.RECORD_OUTCOMES)
    assert isinstance(settle.input, m.RecordOutcomes)
    assert settle.input.outcomes[0].error == "step kid timed out after 10 s"
    run.answer(settle)
    run.answer_all()  # records the retry
    run.tick(1)
    assert _dispatched(run) == [("kid", "run", 1), ("kid", "run", 2)]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_timed_out_child_without_a_retry_is_waited_for_before_the_run_ends() -> None:
    run = _kid()
    for _ in range(5):
        run.answer_all()
        run.tick(60)
    assert run.complete is None
    assert not any(
        isinstance(c, m.CallActivity) and isinstance(c.input, m.RecordStatus) and c.input.status in m.TERMINAL
        for c in run.log
    )
    run.send(m.ChildEnded("kid", 1, {"status": "failed", "error": "boom"}, False, run.now))
    _settle(run)
    assert run.complete is not None and run.complete["status"] == "failed"
    assert run.complete["error"] == "step kid timed out after 10 s"
    assert len(_cancels(run)) == 1  # the failure that follows does not tell it again


def test_a_cancel_while_a_timed_out_child_stops_does_not_tell_it_again() -> None:
    run = _kid()
    run.answer_all()
    run.send(m.EventRaised("cancel", {}, run.now))
    run.answer_all()
    assert len(_cancels(run)) == 1 and run.complete is None
    run.send(m.ChildEnded("kid", 1, CANCELLED, False, run.now))
    _settle(run)
    assert run.complete is not None and run.complete["status"] == "cancelled"


def test_under_rules_10_a_timed_out_child_is_given_up_at_once() -> None:
    """An execution started under rules 10 replays into the commands it recorded: the timeout is recorded with the
    cancel, the retry starts beside the child, and the child's later success counts for nothing."""
    run = _kid(attempts=2, rules=10)
    assert _outcomes(run) == [("kid", 1, False, "timed_out")]
    run.answer_all()
    run.answer_all()
    run.tick(1)
    assert _dispatched(run) == [("kid", "run", 1), ("kid", "run", 2)]
    assert run.send(m.ChildEnded("kid", 1, SUCCEEDED, False, run.now)) == []
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def _wait(params: dict[str, Any], timeout_s: int, rules: int = m.RULES) -> Recorded:
    return Recorded(
        [{"id": "w", "action": "wait", **params}], plan={"w": {"kind": "wait", "timeout_s": timeout_s}}, rules=rules
    )


def test_a_wait_past_its_steps_timeout_fails_as_it_starts_naming_the_bound() -> None:
    until = (T0 + timedelta(days=75)).isoformat()  # the run starts at T0
    for params, timeout_s in (({"until": until}, 30 * 86400), ({"seconds": 120}, 60)):
        run = _wait(params, timeout_s)
        (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
        assert isinstance(dispatch.input, m.DispatchSteps)
        assert dispatch.input.starts == []
        (note,) = dispatch.input.notes
        assert note.kind is m.NoteKind.FAILED and note.error is not None
        assert f"past the step's timeout of {timeout_s} s" in note.error
        _settle(run)
        assert run.complete is not None and run.complete["status"] == "failed"
        assert "timed out" not in run.complete["error"]


def test_a_wait_within_its_steps_timeout_runs_and_under_rules_10_one_past_it_timed_out() -> None:
    run = _wait({"seconds": 60}, 60)
    _settle(run, 30)
    assert run.complete is not None and run.complete["status"] == "succeeded"
    old = _wait({"seconds": 120}, 60, rules=10)
    (dispatch,) = old.activities(m.Activity.DISPATCH_STEPS)
    assert starts(dispatch) == [("w", "run", 1)]
    _settle(old, 30)
    assert old.complete is not None and old.complete["error"] == "step w timed out after 60 s"
    replayed, log = old.replayed()
    assert log == old.log and replayed == old.state


def _kid_beside_x(rules: int = m.RULES) -> Recorded:
    """Steps `kid` (an intent, 10 s timeout, one attempt), `x` beside it and `y` after `x`: kid's child c-1 starts, the
    timer fires after 11 s (kid times out, its child told to cancel), then x succeeds."""
    run = Recorded(
        [
            {"id": "kid", "action": "intent.run", "intent": "other"},
            {"id": "x", "action": "x", "depends_on": []},
            {"id": "y", "action": "x", "depends_on": ["x"]},
        ],
        plan=KID_PLAN,
        rules=rules,
    )
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(dispatch, {"status": "running", "children": {"kid": {"execution_id": "c-1", "input": {}}}})
    run.tick(11)
    run.answer_all()
    run.result("x", output={"x": 1})
    run.answer_all()
    return run


def test_a_timed_out_child_without_a_retry_holds_the_rest_of_the_run_until_it_ends() -> None:
    """Under rules 10 the run stopped at the timeout; waiting for the child must not let it start new steps."""
    run = _kid_beside_x()
    for _ in range(3):
        run.answer_all()
        run.tick(60)
    assert run.state.flights["kid"].stage is m.Stage.STOPPING
    assert _dispatched(run) == [("kid", "run", 1), ("x", "run", 1)]  # y waits
    assert not run.state.stopping and "y" not in run.state.failed  # nothing abandoned: the child may still succeed
    run.send(m.ChildEnded("kid", 1, CANCELLED, False, run.now))
    _settle(run)
    assert _dispatched(run) == [("kid", "run", 1), ("x", "run", 1)]
    assert run.complete is not None and run.complete["status"] == "failed"
    assert run.complete["error"] == "step kid timed out after 10 s"
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_timed_out_child_that_succeeds_lets_the_held_run_carry_on() -> None:
    run = _kid_beside_x()
    run.tick(60)
    assert _dispatched(run) == [("kid", "run", 1), ("x", "run", 1)]
    run.send(m.ChildEnded("kid", 1, SUCCEEDED, False, run.now))
    assert _dispatched(run) == [("kid", "run", 1), ("x", "run", 1)]  # its success is recorded first
    run.answer_all()
    assert _dispatched(run) == [("kid", "run", 1), ("x", "run", 1), ("y", "run", 1)]
    run.answer_all()
    run.result("y", output={"y": 1})
    _settle(run)
    assert run.complete is not None and run.complete["status"] == "succeeded"
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_under_rules_10_a_timed_out_child_stops_the_run_at_its_timeout() -> None:
    run = _kid_beside_x(rules=10)
    assert run.state.stopping
    assert _dispatched(run) == [("kid", "run", 1), ("x", "run", 1)]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def _cancel_fails(run: Recorded) -> None:
    (cancel,) = run.activities(m.Activity.CANCEL_CHILD)
    run.open.remove(cancel)
    run.send(m.ActivityFailed(cancel.id, "the control plane is unreachable", run.now))


def test_a_cancel_of_a_timed_out_child_that_failed_for_good_is_issued_again_after_a_delay() -> None:
    run = _kid()
    _cancel_fails(run)
    assert len(_cancels(run)) == 1
    timers = [c.at for c in run.log if isinstance(c, m.SetTimer)]
    assert timers[-1] == run.now + timedelta(seconds=m.CANCEL_CHILD_AGAIN_S)
    run.tick(m.CANCEL_CHILD_AGAIN_S - 1)
    assert len(_cancels(run)) == 1
    run.tick(1)
    assert _cancels(run) == [m.CancelChild(tenant_id="t-1", execution_id="e-1", child_execution_id="c-1")] * 2
    _cancel_fails(run)  # failed again: again after the same delay
    run.tick(m.CANCEL_CHILD_AGAIN_S)
    assert len(_cancels(run)) == 3
    run.answer_all()  # this one is heard: nothing more
    run.tick(m.CANCEL_CHILD_AGAIN_S)
    assert len(_cancels(run)) == 3
    run.send(m.ChildEnded("kid", 1, CANCELLED, False, run.now))
    _settle(run)
    assert run.complete is not None and run.complete["error"] == "step kid timed out after 10 s"
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_stopping_runs_cancel_of_its_child_that_failed_for_good_is_issued_again() -> None:
    run = Recorded([{"id": "kid", "action": "intent.run", "intent": "other"}], plan={"kid": {"kind": "intent"}})
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(dispatch, {"status": "running", "children": {"kid": {"execution_id": "c-1", "input": {}}}})
    run.send(m.EventRaised("cancel", {}, run.now))
    run.answer_all(m.Activity.DISPATCH_STEPS)
    run.answer_all(m.Activity.RECORD_STATUS)
    _cancel_fails(run)
    run.tick(m.CANCEL_CHILD_AGAIN_S)
    assert len(_cancels(run)) == 2
    run.answer_all()
    run.send(m.ChildEnded("kid", 1, CANCELLED, False, run.now))
    _settle(run)
    assert run.complete is not None and run.complete["status"] == "cancelled"
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_under_rules_10_a_failed_cancel_of_a_child_is_not_issued_again() -> None:
    run = Recorded(
        [{"id": "kid", "action": "intent.run", "intent": "other"}], plan={"kid": {"kind": "intent"}}, rules=10
    )
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(dispatch, {"status": "running", "children": {"kid": {"execution_id": "c-1", "input": {}}}})
    run.send(m.EventRaised("cancel", {}, run.now))
    run.answer_all(m.Activity.DISPATCH_STEPS)
    run.answer_all(m.Activity.RECORD_STATUS)
    _cancel_fails(run)
    assert run.state.flights["kid"].ends_at is None
    run.tick(m.CANCEL_CHILD_AGAIN_S)
    assert len(_cancels(run)) == 1
    assert all(p.child is None for p in run.state.pending.values())
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state
