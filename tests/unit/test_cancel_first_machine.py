# intent_ref: platform.execution
"""Rules 7 (ADR 0014): a failure recorded after a cancel, its verdict reaching the run first, is one during it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.engine import machine as m
from tests.unit.test_engine_machine import PLAN, STEPS, T0, Run, default_answer, replay, request

FAILED_AFTER_THE_CANCEL = {"ok": False, "error": "boom", "retryable": False, "state": "failed", "cancel_first": True}


def _out(step: dict[str, Any], **extra: Any) -> Run:
    """One remote step, its work out (its start and the run's move to waiting recorded)."""
    run = Run([step], plan={step["id"]: {"kind": "module", "remote": True, "timeout_s": 600}}, **extra)
    run.answer_all()
    run.answer_all()
    return run


def _finish(run: Run) -> dict[str, Any]:
    """Answer what the run asks until it completes; its result."""
    for _ in range(10):
        if run.complete is not None:
            return run.complete
        run.answer_all()
    raise AssertionError("the run did not end")


def _dispatches(run: Run) -> list[m.DispatchSteps]:
    return [c.input for c in run.log if isinstance(c, m.CallActivity) and isinstance(c.input, m.DispatchSteps)]


def test_a_failure_recorded_after_the_cancel_ends_the_run_cancelled_though_its_verdict_came_first() -> None:
    """Before: the failure became the cause and the run ended failed, though the cancel was answered 202."""
    run = _out({"id": "build", "action": "x"})
    run.send(m.EventRaised("run:build:1", FAILED_AFTER_THE_CANCEL, run.now))
    assert run.state.cancelled and run.state.first_failure is None
    assert run.state.views["build"]["state"] == "failed"  # its own verdict, as recorded
    end_ = _finish(run)
    assert (end_["status"], end_["error"], end_["failed_step"]) == ("cancelled", "cancelled", None)
    (end,) = [
        c.input
        for c in run.log
        if isinstance(c, m.CallActivity) and isinstance(c.input, m.RecordStatus) and c.input.status in m.TERMINAL
    ]
    assert (end.status, end.error) == (m.Status.CANCELLED, "cancelled")
    # The cancel's event, late, changes nothing.
    state = run.state
    assert run.send(m.EventRaised("cancel", {}, run.now)) == [] and run.state == state


def test_the_cancels_event_after_the_verdict_changes_nothing_while_work_is_still_out() -> None:
    steps = [
        {"id": "a", "action": "x"},
        {"id": "b", "action": "x", "depends_on": []},
        {"id": "gate", "action": "approval", "depends_on": []},
    ]
    plan = {
        "a": {"kind": "module", "remote": True},
        "b": {"kind": "module", "remote": True},
        "gate": {"kind": "approval"},
    }
    run = Run(steps, plan=plan)
    run.answer_all()
    commands = run.send(m.EventRaised("run:a:1", FAILED_AFTER_THE_CANCEL, run.now))
    # As the cancel's own reduction would have: the approval, which only waits, ends; b's work out is let end.
    (abandon,) = [c.input for c in commands if isinstance(c, m.CallActivity)]
    assert isinstance(abandon, m.DispatchSteps)
    assert [(n.kind, n.step_id, n.error) for n in abandon.notes] == [(m.NoteKind.ABANDONED, "gate", "cancelled")]
    state = run.state
    assert run.send(m.EventRaised("cancel", {}, run.now)) == [] and run.state == state
    run.answer_all()
    run.result("b")
    assert _finish(run)["status"] == "cancelled"
    assert run.state.views["a"]["state"] == "failed" and run.state.views["gate"]["state"] == "cancelled"


def test_it_ends_as_if_the_cancels_event_had_come_first() -> None:
    """The same end, cause and step views whichever of the two the run gets first."""
    ends = []
    for verdict_first in (True, False):
        run = _out({"id": "build", "action": "x", "retry": {"max_attempts": 3, "initial_interval_s": 5}})
        events = [
            m.EventRaised("run:build:1", {**FAILED_AFTER_THE_CANCEL, "retryable": True}, run.now),
            m.EventRaised("cancel", {}, run.now),
        ]
        for event in events if verdict_first else events[::-1]:
            run.send(event)
            run.answer_all()
        ends.append((run.complete, run.state.views, run.state.failed))
        # No retry is recorded: a failure during a cancel is not retried.
        assert not [n for d in _dispatches(run) for n in d.notes if n.kind is m.NoteKind.RETRYING]
    assert ends[0] == ends[1] and ends[0][0] is not None and ends[0][0]["status"] == "cancelled"


def test_a_verdict_answered_by_the_dispatch_or_by_record_outcomes_says_it_too() -> None:
    # Answered with the dispatch that started it (ADR 0034), the cancel not seen by that dispatch.
    run = Run([{"id": "s", "action": "x"}])
    (first,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(first, {**default_answer(first), "results": {"run:s:1": FAILED_AFTER_THE_CANCEL}})
    assert _finish(run)["status"] == "cancelled"
    # A timeout settled by record_outcomes, recorded after the cancel.
    run = _out({"id": "build", "action": "x"})
    run.tick(601)
    (settle,) = run.activities(m.Activity.RECORD_OUTCOMES)
    assert isinstance(settle.input, m.RecordOutcomes) and settle.input.cancel_first  # asked to say so
    timed_out = {**FAILED_AFTER_THE_CANCEL, "retryable": True, "state": "timed_out", "error": "timed out"}
    run.answer(settle, [timed_out])
    assert _finish(run)["status"] == "cancelled"


def test_a_child_that_could_not_start_after_the_cancel_ends_its_parent_cancelled() -> None:
    run = Run([{"id": "kid", "action": "intent.run", "intent": "other"}], plan={"kid": {"kind": "intent"}})
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(dispatch, {**default_answer(dispatch), "children": {"kid": {"verdict": FAILED_AFTER_THE_CANCEL}}})
    assert _finish(run)["status"] == "cancelled"


def test_a_failure_already_stopping_the_run_stays_the_cause() -> None:
    """A failure applied before stays the cause: the flag of a later verdict does not make the run cancelled."""
    steps = [{"id": "a", "action": "x"}, {"id": "b", "action": "x", "depends_on": []}]
    run = Run(steps, plan={"a": {"kind": "module", "remote": True}, "b": {"kind": "module", "remote": True}})
    run.answer_all()
    run.result("a", ok=False, retryable=False)
    run.send(m.EventRaised("run:b:1", FAILED_AFTER_THE_CANCEL, run.now))
    end = _finish(run)
    assert (end["status"], end["failed_step"]) == ("failed", "a")


def test_an_execution_started_under_rules_6_ends_failed_and_replays_as_recorded() -> None:
    """Started before rules 7: the flag is not read, so its history gives the commands it recorded."""
    logs = []
    for data in (FAILED_AFTER_THE_CANCEL, {k: v for k, v in FAILED_AFTER_THE_CANCEL.items() if k != "cancel_first"}):
        run = _out({"id": "build", "action": "x"}, rules=6)
        run.tick(601)
        (settle,) = run.activities(m.Activity.RECORD_OUTCOMES)
        assert isinstance(settle.input, m.RecordOutcomes) and not settle.input.cancel_first  # its input as recorded
        run.answer(settle, [data])
        run.send(m.EventRaised("cancel", {}, run.now))
        assert _finish(run)["status"] == "failed"
        logs.append(run.log)
    assert logs[0] == logs[1]


# ----------------------------------------------------------------------------------------------- properties
Choice = tuple[str, int, bool]
choices = st.lists(
    st.tuples(st.sampled_from(["answer", "result", "timer", "cancel"]), st.integers(0, 5), st.booleans()),
    max_size=40,
)


def _drive(picks: list[Choice], rules: int, flagged: bool) -> tuple[m.State, list[m.Command], list[m.Event]]:
    """A random well-formed run of STEPS whose failures (results, the dispatch's and record_outcomes' answers) say
    a cancel came first on every other pick when `flagged`; returns the state, every command and every event."""
    now = T0
    state, commands = m.begin(request(STEPS, plan=PLAN, rules=rules), now)
    log, events, open_ = list(commands), [], [c for c in commands if isinstance(c, m.CallActivity)]
    waits = [c.name for c in commands if isinstance(c, m.WaitForEvent)]
    for kind, index, flag in picks:
        first = flagged and index % 2 == 1
        event: m.Event | None = None
        if kind == "answer" and open_:
            command = open_.pop(index % len(open_))
            answer = default_answer(command)
            if isinstance(answer, list):
                answer = [{**v, "cancel_first": True} if first and not v["ok"] else v for v in answer]
            elif flag and isinstance(command.input, m.DispatchSteps):
                verdict = {"ok": False, "error": "e", "cancel_first": first}
                answer["results"] = {
                    f"{s.phase.value}:{s.step_id}:{s.attempt}": verdict
                    for s in command.input.starts
                    if s.kind is m.StepKind.MODULE
                }
            event = m.ActivityDone(command.id, answer, now)
        elif kind == "result" and waits:
            name = waits.pop(index % len(waits))
            if name != "cancel":
                data = {"ok": flag, "output": index, "error": "e", **({"cancel_first": True} if first else {})}
                event = m.EventRaised(name, data, now)
        elif kind == "timer":
            now += timedelta(seconds=index)
            event = m.TimerFired(now)
        elif kind == "cancel" and flag:
            event = m.EventRaised("cancel", {}, now)
        if event is None:
            continue
        events.append(event)
        state, commands = m.reduce(state, event)
        log += commands
        open_ += [c for c in commands if isinstance(c, m.CallActivity)]
        waits += [c.name for c in commands if isinstance(c, m.WaitForEvent)]
    return state, log, events


@settings(max_examples=150, deadline=None)
@given(choices)
def test_replaying_failures_that_came_after_a_cancel_gives_the_same_commands(picks: list[Choice]) -> None:
    state, log, events = _drive(picks, m.RULES, flagged=True)
    replayed, replay_log = replay(STEPS, events, rules=m.RULES)
    assert replay_log == log and replayed == state
    restored = m.State.model_validate(state.model_dump(mode="json"))
    probe = m.TimerFired(T0 + timedelta(days=1))
    assert m.reduce(restored, probe)[1] == m.reduce(state, probe)[1]


@settings(max_examples=150, deadline=None)
@given(choices)
def test_under_rules_6_a_verdicts_flag_changes_no_command(picks: list[Choice]) -> None:
    """An execution started before rules 7 replays into exactly the commands it would give without the flag."""
    _, flagged, _ = _drive(picks, 6, flagged=True)
    _, plain, _ = _drive(picks, 6, flagged=False)
    assert flagged == plain


def test_the_property_run_does_apply_a_failure_as_one_during_a_cancel() -> None:
    """The properties above are about the new rule: some run of events ends cancelled by a flagged failure alone."""
    picks: list[Choice] = [("answer", 0, False), ("result", 1, False), ("answer", 0, False), ("answer", 0, False)]
    state, log, events = _drive(picks, m.RULES, flagged=True)
    assert not any(isinstance(e, m.EventRaised) and e.name == "cancel" for e in events)
    assert state.cancelled and "a" in state.failed
    _, old, _ = _drive(picks, 6, flagged=True)
    assert old != log


ABANDONED_BY_THE_CANCEL = {
    "ok": False,
    "error": "cancelled before a worker took it",
    "retryable": False,
    "state": "abandoned",
    "cancel_first": True,
}


def test_the_verdict_of_work_the_cancel_ended_coming_first_ends_the_run_cancelled() -> None:
    """The sweeper raises again a verdict whose raise failed, which can reach the run before a cancel whose raise
    failed too: without the mark the abandoned step was a failure, and the run ended failed."""
    run = _out({"id": "build", "action": "x"})
    run.send(m.EventRaised("run:build:1", ABANDONED_BY_THE_CANCEL, run.now))
    assert run.state.cancelled and run.state.first_failure is None
    assert run.state.views["build"]["state"] == "cancelled"
    end_ = _finish(run)
    assert (end_["status"], end_["error"], end_["failed_step"]) == ("cancelled", "cancelled", None)
    state = run.state
    assert run.send(m.EventRaised("cancel", {}, run.now)) == [] and run.state == state
