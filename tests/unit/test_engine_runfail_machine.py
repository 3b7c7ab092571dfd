# intent_ref: platform.execution
"""Rules 8 (ADR 0014): a failure the run decides itself is recorded before it is applied, by a transaction that reads
the cancel, so that a cancel's answer says how the run ends: a stored output that cannot be read, a record of
outcomes that failed for good, a child that did not start."""

from __future__ import annotations

from typing import Any

from shared.engine import machine as m
from tests.unit.test_engine_machine import Recorded

BLOB = {"$blob": {"container": "c", "name": "n", "size": 10, "sha256": "0" * 64}}
READS_A: list[dict[str, Any]] = [
    {"id": "a", "action": "x"},
    {"id": "b", "action": "x", "depends_on": ["a"], "v": "${steps.a.output.part}"},
    {"id": "c", "action": "x", "depends_on": ["a"], "w": "${steps.a.output.part}"},
]
UNREAD = "the stored output of step a could not be read: blob gone"
CANCEL_FIRST = {"cancel_first": True}


def _calls(commands: list[m.Command], name: m.Activity) -> list[m.CallActivity]:
    return [c for c in commands if isinstance(c, m.CallActivity) and c.name is name]


def _finish(run: Recorded) -> dict[str, Any]:
    for _ in range(10):
        if run.complete is not None:
            return run.complete
        run.answer_all()
    raise AssertionError("the run did not end")


def _replays(run: Recorded) -> None:
    state, log = run.replayed()
    assert log == run.log and state == run.state


def _load_failed(rules: int = m.RULES) -> tuple[Recorded, list[m.Command]]:
    """A run reusing `a`'s stored output, which two later steps read; reading it back fails for good."""
    run = Recorded(READS_A, reused={"a": BLOB}, rules=rules)
    (load,) = run.activities(m.Activity.LOAD_OUTPUT)
    run.answer_all(m.Activity.DISPATCH_STEPS)  # the move to running
    run.open.remove(load)
    return run, run.send(m.ActivityFailed(load.id, "blob gone", run.now))


# ------------------------------------------------------------------------------ a stored output that cannot be read
def test_an_output_that_cannot_be_read_fails_its_first_reader_by_a_dispatch_before_the_run_stops() -> None:
    """Before: the failure was applied at once and recorded nowhere a cancel reads (202, and the run ended failed)."""
    run, commands = _load_failed()
    (dispatch,) = _calls(commands, m.Activity.DISPATCH_STEPS)
    assert isinstance(dispatch.input, m.DispatchSteps) and dispatch.input.starts == []
    assert [(n.kind, n.step_id, n.attempt, n.error) for n in dispatch.input.notes] == [
        (m.NoteKind.FAILED, "b", 1, UNREAD)
    ]
    assert not run.state.stopping  # applied once recorded
    run.answer(dispatch)
    assert run.state.first_failure == "b" and not run.state.cancelled
    end = _finish(run)
    assert (end["status"], end["failed_step"], end["error"]) == ("failed", "b", UNREAD)
    assert run.state.views["c"] == {"state": "pending"}  # never started, as after any failure
    _replays(run)


def test_a_cancel_recorded_before_that_record_ends_the_run_cancelled() -> None:
    run, commands = _load_failed()
    (dispatch,) = _calls(commands, m.Activity.DISPATCH_STEPS)
    run.answer(dispatch, {"status": "running", "cancel_requested": True})
    assert run.state.cancelled and run.state.first_failure is None
    assert run.state.views["b"]["state"] == "failed"  # recorded, during the cancel
    end = _finish(run)
    assert (end["status"], end["error"], end["failed_step"]) == ("cancelled", "cancelled", None)
    state = run.state
    assert run.send(m.EventRaised("cancel", {}, run.now)) == [] and run.state == state
    _replays(run)


def test_nothing_starts_against_the_unread_output_while_its_failure_is_recorded() -> None:
    run, commands = _load_failed()
    # A timer (or any event) while the record is out starts nothing: b and c would resolve against the reference.
    run.tick(1)
    dispatches = [c.input for c in _calls(run.log, m.Activity.DISPATCH_STEPS) if isinstance(c.input, m.DispatchSteps)]
    assert [start for dispatch in dispatches for start in dispatch.starts] == []


def test_a_dispatch_of_that_record_that_failed_applies_it_unrecorded() -> None:
    run, commands = _load_failed()
    (dispatch,) = _calls(commands, m.Activity.DISPATCH_STEPS)
    run.open.remove(dispatch)
    run.send(m.ActivityFailed(dispatch.id, "database away", run.now))
    assert run.state.first_failure == "b"
    assert _finish(run)["status"] == "failed"


def test_an_execution_started_under_rules_7_fails_at_once_and_replays_as_recorded() -> None:
    run, commands = _load_failed(rules=7)
    assert _calls(commands, m.Activity.DISPATCH_STEPS) == []
    assert run.state.first_failure == "a"
    end = _finish(run)
    assert (end["status"], end["failed_step"]) == ("failed", "a")
    _replays(run)


# --------------------------------------------------------------------------- a record of outcomes that failed for good
WAITS: list[dict[str, Any]] = [{"id": "w", "action": "wait", "seconds": 5}]


def _settle_failed(rules: int = m.RULES) -> tuple[Recorded, list[m.Command]]:
    """A wait whose end's record fails for good."""
    run = Recorded(WAITS, plan={"w": {"kind": "wait"}}, rules=rules)
    run.answer_all()
    run.tick(5)
    (settle,) = run.activities(m.Activity.RECORD_OUTCOMES)
    run.open.remove(settle)
    return run, run.send(m.ActivityFailed(settle.id, "database away", run.now))


def test_a_record_of_outcomes_that_failed_for_good_is_recorded_failed_before_it_is_applied() -> None:
    """Before: the attempt was failed unrecorded (its step read running, its attempt dispatched, in an ended run)."""
    run, commands = _settle_failed()
    (again,) = _calls(commands, m.Activity.RECORD_OUTCOMES)
    assert isinstance(again.input, m.RecordOutcomes) and again.input.cancel_first
    (outcome,) = again.input.outcomes
    assert (outcome.step_id, outcome.ok, outcome.state, outcome.action, outcome.error) == (
        "w",
        False,
        "failed",
        "wait",
        "database away",
    )
    assert not run.state.stopping
    run.answer(again, [{"ok": False, "error": "database away", "retryable": True, "state": "failed", **CANCEL_FIRST}])
    end = _finish(run)
    assert (end["status"], end["error"]) == ("cancelled", "cancelled")
    _replays(run)


def test_that_record_failing_too_applies_the_failure_unrecorded() -> None:
    run, commands = _settle_failed()
    (again,) = _calls(commands, m.Activity.RECORD_OUTCOMES)
    run.open.remove(again)
    more = run.send(m.ActivityFailed(again.id, "database away", run.now))
    assert _calls(more, m.Activity.RECORD_OUTCOMES) == []
    end = _finish(run)
    assert (end["status"], end["failed_step"], end["error"]) == ("failed", "w", "database away")


def test_under_rules_7_a_record_that_failed_for_good_fails_the_attempt_at_once() -> None:
    run, commands = _settle_failed(rules=7)
    assert _calls(commands, m.Activity.RECORD_OUTCOMES) == []
    assert _finish(run)["status"] == "failed"
    _replays(run)


# ------------------------------------------------------------------------------------------ a child that did not start
CHILD: list[dict[str, Any]] = [{"id": "kid", "action": "intent.run", "intent": "other"}]


def _no_child(rules: int = m.RULES) -> tuple[Recorded, list[m.Command]]:
    run = Recorded(CHILD, plan={"kid": {"kind": "intent", "timeout_s": 600}}, rules=rules)
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    return run, run.answer(dispatch, {"status": "running", "children": {}})


def test_a_child_the_dispatch_did_not_answer_is_settled_failed_before_it_is_applied() -> None:
    run, commands = _no_child()
    (settle,) = _calls(commands, m.Activity.RECORD_OUTCOMES)
    assert isinstance(settle.input, m.RecordOutcomes)
    (outcome,) = settle.input.outcomes
    assert (outcome.step_id, outcome.ok, outcome.action, outcome.error) == (
        "kid",
        False,
        "intent.run",
        "child did not start",
    )
    assert not run.state.stopping
    run.answer(settle, [{"ok": False, "error": "child did not start", "state": "failed", **CANCEL_FIRST}])
    end = _finish(run)
    assert (end["status"], end["error"]) == ("cancelled", "cancelled")
    _replays(run)


def test_without_a_cancel_that_child_fails_its_step() -> None:
    run, commands = _no_child()
    (settle,) = _calls(commands, m.Activity.RECORD_OUTCOMES)
    run.answer(settle)
    end = _finish(run)
    assert (end["status"], end["failed_step"], end["error"]) == ("failed", "kid", "child did not start")


def test_under_rules_7_that_child_fails_its_step_at_once() -> None:
    run, commands = _no_child(rules=7)
    assert _calls(commands, m.Activity.RECORD_OUTCOMES) == []
    assert run.state.first_failure == "kid"
    _replays(run)


# ---------------------------------------------------------------------- parameters that cannot resolve, after a cancel
UNRESOLVED: list[dict[str, Any]] = [
    {"id": "a", "action": "x"},
    {"id": "b", "action": "x", "depends_on": ["a"], "v": "${steps.a.output.missing}"},
    {"id": "c", "action": "x", "depends_on": ["a"]},
]


def _fails_before_it_starts(rules: int = m.RULES) -> tuple[Recorded, m.CallActivity]:
    """b's parameters cannot resolve: the dispatch of its level records it failed (and starts c)."""
    run = Recorded(UNRESOLVED, reused={"a": {"n": 1}}, rules=rules)
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert isinstance(dispatch.input, m.DispatchSteps)
    assert [(n.kind, n.step_id) for n in dispatch.input.notes] == [(m.NoteKind.FAILED, "b")]
    assert run.state.first_failure == "b"
    return run, dispatch


def test_a_failure_before_a_step_starts_recorded_after_a_cancel_ends_the_run_cancelled() -> None:
    """Before: the dispatch that recorded it after the cancel (202) said so, and the run still ended failed."""
    run, dispatch = _fails_before_it_starts()
    run.answer(dispatch, {"status": "running", "cancel_requested": True, "refused": True})
    assert run.state.cancelled and run.state.first_failure is None and "b" in run.state.failed
    end = _finish(run)
    assert (end["status"], end["error"], end["failed_step"]) == ("cancelled", "cancelled", None)
    _replays(run)


def test_recorded_with_no_cancel_it_stays_the_cause() -> None:
    run, dispatch = _fails_before_it_starts()
    run.answer(dispatch)
    run.result("c")
    end = _finish(run)
    assert (end["status"], end["failed_step"]) == ("failed", "b")


def test_the_cancels_event_before_that_answer_changes_nothing_and_the_answer_decides() -> None:
    # The cancel's event may reach the run before the dispatch's answer: a failure stops the run by then, so the event
    # alone changes nothing; the answer, which says the cancel was recorded before the failure, makes it the cause.
    run, dispatch = _fails_before_it_starts()
    run.send(m.EventRaised("cancel", {}, run.now))
    assert not run.state.cancelled
    run.answer(dispatch, {"status": "running", "cancel_requested": True, "refused": True})
    assert run.state.cancelled and _finish(run)["status"] == "cancelled"
    _replays(run)


def test_under_rules_7_it_ends_failed_as_recorded() -> None:
    run, dispatch = _fails_before_it_starts(rules=7)
    run.answer(dispatch, {"status": "running", "cancel_requested": True, "refused": True})
    assert _finish(run)["status"] == "failed"
    _replays(run)
