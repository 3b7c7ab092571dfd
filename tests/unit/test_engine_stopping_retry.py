# intent_ref: platform.execution
"""Rules 8 (ADR 0014): a retry whose dispatch is out as the run begins stopping, and that dispatch fails for good,
ends with the run's other waits; it started at the next timer, in a cancelled or failed run, under earlier rules."""

from __future__ import annotations

from typing import Any

from shared.engine import machine as m
from tests.unit.test_engine_machine import Recorded, starts

BLOB: dict[str, Any] = {"$blob": {"container": "c", "name": "n", "size": 10, "sha256": "0" * 64}}

STEPS: list[dict[str, Any]] = [
    {"id": "a", "action": "x", "depends_on": []},
    {"id": "k", "action": "x", "depends_on": [], "retry": {"max_attempts": 3, "initial_interval_s": 1}},
]


def _started(run: Recorded) -> list[tuple[str, int]]:
    return [
        (step_id, attempt)
        for command in run.log
        if isinstance(command, m.CallActivity) and command.name is m.Activity.DISPATCH_STEPS
        for step_id, _, attempt in starts(command)
    ]


def _finish(run: Recorded) -> dict[str, Any]:
    for _ in range(10):
        if run.complete is not None:
            return run.complete
        run.answer_all()
        for waited in ("a", "k"):
            flight = run.state.flights.get(waited)
            if flight is not None and flight.stage is m.Stage.RUNNING:
                run.result(waited, flight.attempt, output={"p": 1})
    raise AssertionError("the run did not end")


def _cancelled_while_the_retry_is_recorded(rules: int) -> Recorded:
    """k's first attempt failed; the cancel comes while the dispatch recording its retry is out, which then fails for
    good; the retry's pause then passes."""
    run = Recorded(STEPS, rules=rules)
    (first,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(first)
    run.result("k", ok=False)
    (retry,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.send(m.EventRaised("cancel", {}, run.now))
    run.open.remove(retry)
    run.send(m.ActivityFailed(retry.id, "database away", run.now))
    run.tick(1)
    return run


def test_a_retry_whose_dispatch_fails_after_a_cancel_does_not_start() -> None:
    run = _cancelled_while_the_retry_is_recorded(rules=8)
    assert _started(run) == [("a", 1), ("k", 1)]
    assert "k" not in run.state.flights and run.state.views["k"]["state"] == "cancelled"
    end = _finish(run)
    assert (end["status"], end["error"]) == ("cancelled", "cancelled")
    assert _started(run) == [("a", 1), ("k", 1)]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_under_rules_7_the_retry_still_starts_so_its_history_replays_as_recorded() -> None:
    """A known limit of earlier rules (ADR 0014): kept, since a run under them recorded that start."""
    run = _cancelled_while_the_retry_is_recorded(rules=7)
    assert _started(run) == [("a", 1), ("k", 1), ("k", 2)]
    assert run.state.cancelled and run.state.flights["k"].attempt == 2
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


def test_a_retry_whose_dispatch_fails_after_a_final_failure_does_not_start() -> None:
    run = Recorded(STEPS)
    (first,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(first)
    run.result("k", ok=False)
    (retry,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.result("a", ok=False)  # no retry left: the run fails, naming a
    run.open.remove(retry)
    run.send(m.ActivityFailed(retry.id, "database away", run.now))
    run.tick(1)
    assert _started(run) == [("a", 1), ("k", 1)]
    end = _finish(run)
    assert (end["status"], end["failed_step"]) == ("failed", "a")
    assert _started(run) == [("a", 1), ("k", 1)] and run.state.views["k"]["state"] == "cancelled"
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


READ_BACK: list[dict[str, Any]] = [
    *STEPS,
    {"id": "b", "action": "x", "depends_on": ["a"], "v": "${steps.a.output.p}"},
]


def test_a_retry_whose_dispatch_fails_after_a_recorded_unread_output_does_not_start() -> None:
    """The run stops once the record of b's failure (a's stored output cannot be read) is answered; k's retry was
    being recorded then."""
    run = Recorded(READ_BACK)
    (first,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(first)
    run.result("k", ok=False)
    (retry,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.result("a", output=BLOB)
    (load,) = run.activities(m.Activity.LOAD_OUTPUT)
    run.open.remove(load)
    run.send(m.ActivityFailed(load.id, "blob gone", run.now))
    (record,) = (c for c in run.activities(m.Activity.DISPATCH_STEPS) if c is not retry)
    run.answer(record)
    assert run.state.first_failure == "b" and run.state.flights["k"].write == retry.id
    run.open.remove(retry)
    run.send(m.ActivityFailed(retry.id, "database away", run.now))
    run.tick(1)
    assert _started(run) == [("a", 1), ("k", 1)]
    end = _finish(run)
    assert (end["status"], end["failed_step"]) == ("failed", "b")
    assert _started(run) == [("a", 1), ("k", 1)]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state
