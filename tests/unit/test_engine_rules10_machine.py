# intent_ref: platform.execution
"""Reducer rules 10 (ADR 0047): at most MAX_STEPS_IN_FLIGHT run-phase attempts of one execution are under way at
once, the ready steps past it starting in definition order as earlier ones end; executions started under rules 9
start a whole level at once and replay into the commands they recorded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.engine import machine as m
from tests.unit.test_engine_machine import Recorded

WIDTH = m.MAX_STEPS_IN_FLIGHT * 2 + 5


def level(width: int = WIDTH, **extra: Any) -> list[dict[str, Any]]:
    """One level of `width` root steps."""
    return [{"id": f"s{i}", "action": "event.emit", "type": "x.y", "depends_on": [], **extra} for i in range(width)]


def started(commands: list[m.Command]) -> list[str]:
    return [
        start.step_id
        for command in commands
        if isinstance(command, m.CallActivity) and isinstance(command.input, m.DispatchSteps)
        for start in command.input.starts
    ]


def under_way(run: Recorded) -> int:
    return sum(1 for flight in run.state.flights.values() if flight.phase is m.Phase.RUN)


def test_a_wide_level_starts_at_most_the_bound_and_the_rest_in_order_as_earlier_steps_end() -> None:
    run = Recorded(level())
    assert started(run.log) == [f"s{i}" for i in range(m.MAX_STEPS_IN_FLIGHT)]
    run.answer_all()
    assert under_way(run) == m.MAX_STEPS_IN_FLIGHT
    # Each result that ends a step lets the next ready step start, in definition order.
    run.result("s3", output=3)
    next_start = started(run.activities(m.Activity.DISPATCH_STEPS))  # type: ignore[arg-type]
    assert next_start == [f"s{m.MAX_STEPS_IN_FLIGHT}"]
    run.answer_all()
    for i in range(WIDTH):
        if f"s{i}" in run.state.flights:
            run.result(f"s{i}", output=i)
            assert under_way(run) <= m.MAX_STEPS_IN_FLIGHT
            run.answer_all()
    while run.state.flights:
        for step_id in list(run.state.flights):
            run.result(step_id, output=step_id)
            assert under_way(run) <= m.MAX_STEPS_IN_FLIGHT
            run.answer_all()
    assert started(run.log) == [f"s{i}" for i in range(WIDTH)]  # each started once, in definition order
    assert run.complete is not None and run.complete["status"] == "succeeded"
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_retry_pause_holds_its_place_among_the_steps_under_way() -> None:
    run = Recorded(level(m.MAX_STEPS_IN_FLIGHT + 1, retry={"max_attempts": 2, "initial_interval_s": 10}))
    run.answer_all()
    run.result("s0", ok=False, retryable=True)  # paused for its retry: still under way
    run.answer_all()
    assert run.state.flights["s0"].stage is m.Stage.PAUSED
    assert f"s{m.MAX_STEPS_IN_FLIGHT}" not in run.state.flights and under_way(run) == m.MAX_STEPS_IN_FLIGHT
    run.result("s1", output=1)
    run.answer_all()
    assert f"s{m.MAX_STEPS_IN_FLIGHT}" in run.state.flights and under_way(run) == m.MAX_STEPS_IN_FLIGHT


def test_an_execution_started_under_rules_9_starts_its_whole_level_and_replays_as_recorded() -> None:
    run = Recorded(level(), rules=9)
    assert started(run.log) == [f"s{i}" for i in range(WIDTH)]
    run.answer_all()
    assert under_way(run) == WIDTH
    for i in range(WIDTH):
        run.result(f"s{i}", output=i)
    run.answer_all()
    assert run.complete is not None and run.complete["status"] == "succeeded"
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, WIDTH - 1), st.booleans(), st.booleans()), max_size=120))
def test_any_order_of_results_keeps_the_bound_and_a_replay_gives_the_same_commands(
    picks: list[tuple[int, bool, bool]],
) -> None:
    # A result for a step under way (ok, or a retryable failure), or a dispatch answered, in any order.
    run = Recorded(level(retry={"max_attempts": 3, "initial_interval_s": 1}))
    for index, ok, answer_first in picks:
        if answer_first:
            run.answer_all()
        flights = sorted(run.state.flights)
        if not flights:
            break
        step_id = flights[index % len(flights)]
        flight = run.state.flights[step_id]
        if flight.stage is m.Stage.PAUSED:
            run.tick(2)
        elif ok:
            run.result(step_id, attempt=flight.attempt, output=step_id)
        else:
            run.result(step_id, attempt=flight.attempt, ok=False, retryable=True)
        assert under_way(run) <= m.MAX_STEPS_IN_FLIGHT
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


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


def test_steps_that_queue_no_work_here_start_beside_the_bound_and_hold_no_place() -> None:
    # Eight approvals (waiting on people, maybe for days) and the step that tells the approvers, defined after them:
    # it held back behind them until one was decided, the execution recorded `waiting` meanwhile (found by review).
    approvals = [{"id": f"ok{i}", "action": "approval", "approvers": ["u"], "depends_on": []} for i in range(8)]
    waits = [{"id": f"w{i}", "action": "wait", "seconds": 3600, "depends_on": []} for i in range(8)]
    remote = [{"id": f"r{i}", "action": "build", "depends_on": []} for i in range(8)]
    work = [{"id": f"s{i}", "action": "event.emit", "type": "x.y", "depends_on": []} for i in range(12)]
    plan: dict[str, Any] = {
        **{f"ok{i}": {"kind": "approval"} for i in range(8)},
        **{f"w{i}": {"kind": "wait"} for i in range(8)},
        **{f"r{i}": {"kind": "module", "remote": True} for i in range(8)},
    }
    run = Recorded([*approvals, *waits, *remote, *work], plan=plan)
    first = started(run.log)
    built_in = [step_id for step_id in first if step_id.startswith("s")]
    assert built_in == [f"s{i}" for i in range(m.MAX_STEPS_IN_FLIGHT)]
    assert set(first) - set(built_in) == {f"{prefix}{i}" for prefix in ("ok", "w", "r") for i in range(8)}
    run.answer_all()
    run.result("s0", output=0)
    assert started(run.activities(m.Activity.DISPATCH_STEPS)) == [f"s{m.MAX_STEPS_IN_FLIGHT}"]  # type: ignore[arg-type]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state
