# intent_ref: platform.execution
"""A compensation whose parameters cannot resolve is given up and the run goes on to its next compensation and its end
(reducer rules 8): the reducer asked for nothing more once it was given up, and the run stayed compensating for ever.
Runs under earlier rules keep that, so that their histories replay as recorded."""

from __future__ import annotations

from typing import Any

import pytest

from shared.engine import machine as m
from tests.unit.test_engine_machine import Recorded

UNDONE_BY_ID: list[dict[str, Any]] = [
    {"id": "a", "action": "x", "compensate": {"action": "undo", "id": "${steps.a.output.id}"}},
    {"id": "z", "action": "x", "compensate": {"action": "undo"}},
    {"id": "b", "action": "x", "depends_on": ["a", "z"]},
]


def _compensate_after_b_fails(rules: int) -> Recorded:
    """a's output has no `id`, which its compensation reads; b fails, so a and z are compensated."""
    run = Recorded(UNDONE_BY_ID, rules=rules)
    outputs = {"a": {"other": 1}, "z": {"ok": 1}}
    for _ in range(12):
        run.answer_all()
        for flight in list(run.state.flights.values()):
            if flight.stage is not m.Stage.RUNNING:
                continue
            if flight.phase is m.Phase.COMPENSATE:
                run.send(m.EventRaised(f"compensate:{flight.step_id}:{flight.attempt}", {"ok": True}, run.now))
            elif flight.step_id == "b":
                run.result("b", ok=False)
            else:
                run.result(flight.step_id, output=outputs[flight.step_id])
    return run


def test_a_compensation_whose_parameters_cannot_resolve_still_lets_the_run_end() -> None:
    """a's compensation cannot resolve: it is compensation_failed and the run ends failed. Before, once it was given
    up, `advance` saw no flight, activity, start or note change and stopped before `end()`."""
    run = _compensate_after_b_fails(m.RULES)
    assert run.state.compensation_failed.keys() == {"a"}
    assert run.complete is not None, (run.state.phase, run.state.compensated, run.open)
    assert run.complete["status"] == "failed" and run.complete["compensated"] == ["z"]
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


@pytest.mark.parametrize("rules", [2, 7])
def test_under_earlier_rules_the_run_stays_compensating_so_its_history_replays_as_recorded(rules: int) -> None:
    run = _compensate_after_b_fails(rules)
    assert run.state.compensation_failed.keys() == {"a"}
    assert run.complete is None and run.state.phase is m.RunPhase.COMPENSATING


BLOB: dict[str, Any] = {"$blob": {"container": "c", "name": "n", "size": 10, "sha256": "0" * 64}}


def test_an_unreadable_output_read_only_by_its_own_compensation_lets_the_run_end() -> None:
    """a's stored output cannot be read; only its compensation reads it, so the run fails naming a (unrecorded, ADR
    0014's case not covered yet) and a's compensation resolves against the blob reference and cannot resolve. Seen:
    no command after the move to compensating is answered, the run never ends."""
    run = Recorded(
        [
            {"id": "a", "action": "x", "compensate": {"action": "undo", "id": "${steps.a.output.id}"}},
            {"id": "b", "action": "x", "depends_on": ["a"]},
        ]
    )
    run.answer_all()
    run.result("a", output=BLOB)
    (load,) = run.activities(m.Activity.LOAD_OUTPUT)
    run.open.remove(load)
    run.send(m.ActivityFailed(load.id, "blob gone", run.now))
    for _ in range(6):
        run.answer_all()
    assert run.state.compensation_failed.keys() == {"a"}
    assert run.complete is not None, (run.state.phase, run.open)
    assert (run.complete["status"], run.complete["failed_step"]) == ("failed", "a")
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state
