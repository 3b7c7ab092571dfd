# intent_ref: platform.execution
"""Reducer rules 9 (ADR 0025): a stopping run records no step as retrying, and a compensation given up is recorded on
its step; executions started under rules 8 replay into the commands they recorded."""

from __future__ import annotations

from typing import Any

import pytest

from shared.engine import machine as m
from tests.unit.test_engine_machine import Recorded

# k may retry, a may not; both time out together, so one record_outcomes answers k's verdict, then a's.
TIMED_OUT: list[dict[str, Any]] = [
    {
        "id": "k",
        "action": "x",
        "timeout_s": 5,
        "depends_on": [],
        "retry": {"max_attempts": 3, "initial_interval_s": 100},
    },
    {"id": "a", "action": "x", "timeout_s": 5, "depends_on": []},
]
K_RETRYABLE = {"ok": False, "error": "k timed out", "state": "timed_out"}
A_FINAL = {"ok": False, "error": "a timed out", "state": "timed_out", "retryable": False}


def _notes(command: m.Command) -> list[tuple[m.NoteKind, str]]:
    assert isinstance(command, m.CallActivity) and isinstance(command.input, m.DispatchSteps)
    return [(note.kind, note.step_id) for note in command.input.notes]


def _dispatches(commands: list[m.Command]) -> list[m.CallActivity]:
    return [c for c in commands if isinstance(c, m.CallActivity) and c.name is m.Activity.DISPATCH_STEPS]


def _started(run: Recorded) -> list[tuple[str, int]]:
    return [
        (start.step_id, start.attempt)
        for command in _dispatches(run.log)
        if isinstance(command.input, m.DispatchSteps)
        for start in command.input.starts
    ]


def _drain(run: Recorded) -> dict[str, Any]:
    for _ in range(12):
        if run.complete is not None:
            return run.complete
        run.answer_all()
    raise AssertionError(f"the run did not end: {run.state.phase} {run.open}")


def _both_timed_out(rules: int, k_verdict: dict[str, Any], a_verdict: dict[str, Any]) -> tuple[Recorded, list[Any]]:
    """k and a time out at once; the record answers k's verdict first, then a's. Returns the commands of the
    reduction of that answer."""
    run = Recorded(TIMED_OUT, rules=rules)
    run.answer_all()
    run.tick(6)
    (record,) = run.activities(m.Activity.RECORD_OUTCOMES)
    assert isinstance(record.input, m.RecordOutcomes)
    assert [outcome.step_id for outcome in record.input.outcomes] == ["k", "a"]
    return run, run.answer(record, [k_verdict, a_verdict])


# ---------------------------------------------------------------------- (d) a retry decided as the run stops
def test_a_retry_decided_before_the_failure_that_stops_the_run_ends_with_it_never_recorded_retrying() -> None:
    run, commands = _both_timed_out(9, K_RETRYABLE, A_FINAL)
    (dispatch,) = _dispatches(commands)
    # Ended in the same dispatch as the run's other waits, its retry never announced.
    assert _notes(dispatch) == [(m.NoteKind.ABANDONED, "k")]
    assert run.state.first_failure == "a" and "k" not in run.state.flights
    assert run.state.views["k"] == {"state": "cancelled", "attempt": 1, "error": "k timed out"}
    assert not any(isinstance(c, m.SetTimer) for c in commands)  # no pause left to wait for
    end = _drain(run)
    assert (end["status"], end["failed_step"]) == ("failed", "a")
    notes = [note for command in _dispatches(run.log) for note in _notes(command)]
    assert (m.NoteKind.RETRYING, "k") not in notes and notes.count((m.NoteKind.ABANDONED, "k")) == 1
    assert _started(run) == [("k", 1), ("a", 1)]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_retry_decided_before_a_failure_after_a_cancel_ends_with_the_cancel() -> None:
    """a's failure was recorded after a cancel (rules 7's `cancel_first`): the run is cancelled in the same reduction
    that decided k's retry, and k ends with it, for the cancel."""
    run, commands = _both_timed_out(9, K_RETRYABLE, {**A_FINAL, "retryable": True, "cancel_first": True})
    (dispatch,) = _dispatches(commands)
    assert isinstance(dispatch.input, m.DispatchSteps)
    assert [(n.kind, n.step_id, n.error) for n in dispatch.input.notes] == [(m.NoteKind.ABANDONED, "k", "cancelled")]
    end = _drain(run)
    assert (end["status"], end["error"]) == ("cancelled", "cancelled")
    assert _started(run) == [("k", 1), ("a", 1)]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_retry_decided_before_a_final_failure_answered_by_the_same_dispatch_is_not_recorded_retrying() -> None:
    """The results a dispatch answers itself (ADR 0034) are applied in one reduction too."""
    run = Recorded(TIMED_OUT, rules=9)
    (move,) = run.activities(m.Activity.DISPATCH_STEPS)
    results = {"run:k:1": {**K_RETRYABLE, "state": "failed"}, "run:a:1": {**A_FINAL, "state": "failed"}}
    commands = run.answer(move, {"status": "running", "cancel_requested": False, "results": results})
    (dispatch,) = _dispatches(commands)
    assert _notes(dispatch) == [(m.NoteKind.ABANDONED, "k")]
    assert (_drain(run)["status"], _started(run)) == ("failed", [("k", 1), ("a", 1)])
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_retry_decided_on_its_own_is_still_recorded_retrying() -> None:
    """Only a retry the same reduction stops is dropped: k's timeout alone retries as before."""
    run = Recorded(TIMED_OUT, rules=9)
    run.answer_all()
    run.tick(6)
    (record,) = run.activities(m.Activity.RECORD_OUTCOMES)
    commands = run.answer(record, [K_RETRYABLE, {"ok": True, "output": {"p": 1}}])
    (dispatch,) = _dispatches(commands)
    assert _notes(dispatch) == [(m.NoteKind.RETRYING, "k")]
    assert run.state.flights["k"].stage is m.Stage.PAUSED and not run.state.stopping


def test_under_rules_8_the_retry_is_recorded_then_abandoned_as_its_history_recorded() -> None:
    """The defect rules 9 mends, kept for runs started under rules 8: the stopping run's dispatch announces k's retry
    and only the next one ends it."""
    run, commands = _both_timed_out(8, K_RETRYABLE, A_FINAL)
    (dispatch,) = _dispatches(commands)
    assert _notes(dispatch) == [(m.NoteKind.RETRYING, "k")]
    (abandon,) = _dispatches(run.answer(dispatch))
    assert _notes(abandon) == [(m.NoteKind.ABANDONED, "k")]
    assert (_drain(run)["status"], _started(run)) == ("failed", [("k", 1), ("a", 1)])
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


# ---------------------------------------------------------------------- (e) a compensation given up is recorded
UNDONE_BY_ID: list[dict[str, Any]] = [
    # a's compensation reads an `id` a's output does not have: it cannot resolve.
    {"id": "a", "action": "x", "depends_on": [], "compensate": {"action": "undo", "id": "${steps.a.output.id}"}},
    {"id": "z", "action": "x", "depends_on": [], "compensate": {"action": "undo"}},
    {"id": "b", "action": "x", "depends_on": ["a", "z"]},
]


def _compensating(rules: int, order: tuple[str, str] = ("a", "z")) -> Recorded:
    """a and z succeed (in `order`), b fails for good: the run compensates the later one of a and z first."""
    run = Recorded(UNDONE_BY_ID, rules=rules)
    run.answer_all()
    run.answer_all()
    outputs = {"a": {"other": 1}, "z": {"ok": 1}}
    for step_id in order:
        run.result(step_id, output=outputs[step_id])
    run.answer_all()
    run.result("b", ok=False)
    run.answer_all()  # the move to compensating
    return run


def _undo(run: Recorded, step_id: str) -> None:
    dispatch = next(c for c in _dispatches(run.open) if isinstance(c.input, m.DispatchSteps) and c.input.starts)
    run.answer(dispatch)
    run.send(m.EventRaised(f"compensate:{step_id}:1", {"ok": True}, run.now))


def test_a_compensation_given_up_is_recorded_on_its_step_before_the_run_ends() -> None:
    """a completed first, so it is compensated last: given up, its record is the run's last dispatch, and the run's
    end is recorded only once that dispatch has answered (a dispatch beside it finds the execution ended)."""
    run = _compensating(9)
    _undo(run, "z")
    (given_up,) = _dispatches(run.open)
    assert isinstance(given_up.input, m.DispatchSteps) and not given_up.input.starts
    (note,) = given_up.input.notes
    assert (note.kind, note.step_id, note.attempt) == (m.NoteKind.COMPENSATION_FAILED, "a", 1)
    assert note.error is not None and note.error.startswith("compensation parameters could not be resolved")
    assert run.activities(m.Activity.RECORD_STATUS) == [] and run.complete is None
    commands = run.answer(given_up)
    (end,) = [c for c in commands if isinstance(c, m.CallActivity)]
    assert end.name is m.Activity.RECORD_STATUS and isinstance(end.input, m.RecordStatus)
    assert end.input.status is m.Status.FAILED
    result = _drain(run)
    assert result["compensated"] == ["z"] and result["compensation_failed"] == {"a": note.error}
    assert run.state.views["a"]["state"] == "compensation_failed"
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_compensation_given_up_is_recorded_with_the_next_compensations_start() -> None:
    """z completed first, so a is compensated first: its record goes out with z's compensation's start."""
    run = _compensating(9, order=("z", "a"))
    (dispatch,) = _dispatches(run.open)
    assert isinstance(dispatch.input, m.DispatchSteps)
    assert [(n.kind, n.step_id) for n in dispatch.input.notes] == [(m.NoteKind.COMPENSATION_FAILED, "a")]
    assert [(s.step_id, s.phase) for s in dispatch.input.starts] == [("z", m.Phase.COMPENSATE)]
    _undo(run, "z")
    result = _drain(run)
    assert result["status"] == "failed" and result["compensated"] == ["z"] and "a" in result["compensation_failed"]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


@pytest.mark.parametrize("order", [("a", "z"), ("z", "a")])
def test_under_rules_8_the_compensation_given_up_is_recorded_nowhere_as_its_history_recorded(
    order: tuple[str, str],
) -> None:
    run = _compensating(8, order)
    if order == ("a", "z"):
        _undo(run, "z")
        assert run.activities(m.Activity.DISPATCH_STEPS) == []
        assert [c.name for c in run.open if isinstance(c, m.CallActivity)] == [m.Activity.RECORD_STATUS]
    else:
        _undo(run, "z")
    result = _drain(run)
    assert result["compensated"] == ["z"] and "a" in result["compensation_failed"]
    notes = [note for command in _dispatches(run.log) for note in _notes(command)]
    assert all(kind is not m.NoteKind.COMPENSATION_FAILED for kind, _ in notes)
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state
