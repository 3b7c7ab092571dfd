# intent_ref: platform.execution
"""Rules 8 (ADR 0014), more: a second stored output that cannot be read while the first one's failure is recorded
changes nothing (that record stops the run), and no retry starts while such a record is out."""

from __future__ import annotations

from typing import Any

from shared.engine import machine as m
from tests.unit.test_engine_machine import Recorded

BLOB = {"$blob": {"container": "c", "name": "n", "size": 10, "sha256": "0" * 64}}
BLOB2 = {"$blob": {"container": "c", "name": "n2", "size": 10, "sha256": "1" * 64}}


def _calls(commands: list[m.Command], name: m.Activity) -> list[m.CallActivity]:
    return [c for c in commands if isinstance(c, m.CallActivity) and c.name is name]


def _finish(run: Recorded) -> dict[str, Any]:
    for _ in range(10):
        if run.complete is not None:
            return run.complete
        run.answer_all()
    raise AssertionError("the run did not end")


TWO_READ_BY_ONE: list[dict[str, Any]] = [
    {"id": "a", "action": "x", "depends_on": []},
    {"id": "b", "action": "x", "depends_on": []},
    {"id": "c", "action": "x", "depends_on": ["a", "b"], "v": "${steps.a.output.p}", "w": "${steps.b.output.p}"},
]


def test_two_unreadable_outputs_read_by_one_step_a_cancel_before_the_record_ends_cancelled() -> None:
    run = Recorded(TWO_READ_BY_ONE, reused={"a": BLOB, "b": BLOB2})
    load_a, load_b = run.activities(m.Activity.LOAD_OUTPUT)
    run.answer_all(m.Activity.DISPATCH_STEPS)  # the move to running
    run.open.remove(load_a)
    commands = run.send(m.ActivityFailed(load_a.id, "blob gone", run.now))
    (dispatch,) = _calls(commands, m.Activity.DISPATCH_STEPS)  # records c failed
    run.open.remove(load_b)
    run.send(m.ActivityFailed(load_b.id, "blob gone", run.now))
    # b's only reader (c) is being recorded already: b's failure is not applied beside it, so the answer decides
    run.answer(dispatch, {"status": "running", "cancel_requested": True})
    end = _finish(run)
    assert (end["status"], end["error"]) == ("cancelled", "cancelled"), end


def test_two_outputs_answered_together_are_loaded_together() -> None:
    run = Recorded(TWO_READ_BY_ONE)
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(
        dispatch,
        {
            "status": "running",
            "results": {"run:a:1": {"ok": True, "output": BLOB}, "run:b:1": {"ok": True, "output": BLOB2}},
        },
    )
    assert len(run.activities(m.Activity.LOAD_OUTPUT)) == 2


RETRIED_BESIDE: list[dict[str, Any]] = [
    {"id": "a", "action": "x", "depends_on": []},
    {"id": "k", "action": "x", "depends_on": [], "retry": {"max_attempts": 3, "initial_interval_s": 5}},
    {"id": "b", "action": "x", "depends_on": ["a"], "v": "${steps.a.output.p}"},
]


def _starts(run: Recorded) -> list[tuple[str, int]]:
    return [
        (s.step_id, s.attempt)
        for c in _calls(run.log, m.Activity.DISPATCH_STEPS)
        if isinstance(c.input, m.DispatchSteps)
        for s in c.input.starts
    ]


def _retry_beside_unread(rules: int) -> tuple[Recorded, m.CallActivity | None]:
    run = Recorded(RETRIED_BESIDE, rules=rules)
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(dispatch)  # a and k running
    run.result("k", ok=False)  # k will retry in 5 s
    run.answer_all(m.Activity.DISPATCH_STEPS)  # its retry recorded
    run.result("a", output=BLOB)
    (load,) = run.activities(m.Activity.LOAD_OUTPUT)
    run.open.remove(load)
    commands = run.send(m.ActivityFailed(load.id, "blob gone", run.now))
    record = next(iter(_calls(commands, m.Activity.DISPATCH_STEPS)), None)
    run.tick(5)  # k's retry is due while the failure's record is out
    return run, record


def test_a_retry_beside_does_not_start_while_the_unread_outputs_failure_is_recorded() -> None:
    run, _ = _retry_beside_unread(m.RULES)
    assert ("k", 2) not in _starts(run), _starts(run)


def test_under_rules_7_that_retry_never_starts() -> None:
    run, _ = _retry_beside_unread(7)
    assert ("k", 2) not in _starts(run)
