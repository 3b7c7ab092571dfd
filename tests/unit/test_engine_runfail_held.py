# intent_ref: platform.execution
"""Rules 8 (ADR 0014): while a failure the run decided itself is recorded, nothing starts and nothing else fails the
run; the waits held meanwhile end with the run once it is applied. Examples, then properties over random runs that
read stored outputs back (some reads failing for good), are answered that a cancel came first, and fail activities."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.engine import machine as m
from tests.unit.test_engine_machine import T0, Recorded, default_answer, request

BLOB: dict[str, Any] = {"$blob": {"container": "c", "name": "n", "size": 10, "sha256": "0" * 64}}
UNREAD = "could not be read"


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


RETRIED_BESIDE: list[dict[str, Any]] = [
    {"id": "a", "action": "x", "depends_on": []},
    {"id": "k", "action": "x", "depends_on": [], "retry": {"max_attempts": 3, "initial_interval_s": 5}},
    {"id": "b", "action": "x", "depends_on": ["a"], "v": "${steps.a.output.p}"},
]


def _held() -> tuple[Recorded, m.CallActivity]:
    """k's retry is due while the failure of a's unreadable output (on b, its reader) is being recorded."""
    run = Recorded(RETRIED_BESIDE)
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.answer(dispatch)
    run.result("k", ok=False)
    run.answer_all(m.Activity.DISPATCH_STEPS)  # k's retry recorded, in 5 s
    run.result("a", output=BLOB)
    (load,) = run.activities(m.Activity.LOAD_OUTPUT)
    run.open.remove(load)
    (record,) = _calls(run.send(m.ActivityFailed(load.id, "blob gone", run.now)), m.Activity.DISPATCH_STEPS)
    return run, record


def test_a_retry_held_while_the_failure_is_recorded_does_not_rearm_the_timer_at_once() -> None:
    """A pause already over would be the earliest deadline again: a timer for now, fired and re-armed without end."""
    run, _ = _held()
    commands = run.tick(5)
    assert [c for c in commands if isinstance(c, m.SetTimer)] == []
    assert run.state.timer_at is None and run.state.flights["k"].stage is m.Stage.PAUSED


def test_the_held_retry_ends_with_the_run_once_the_failure_is_applied() -> None:
    run, record = _held()
    run.tick(5)
    run.answer(record)
    assert run.state.first_failure == "b" and "k" not in run.state.flights
    assert run.state.views["k"]["state"] == "cancelled"  # abandoned, as a stopping run's waits are
    end = _finish(run)
    assert (end["status"], end["failed_step"]) == ("failed", "b")
    _replays(run)


def test_the_held_retry_ends_with_the_run_when_the_record_fails_too() -> None:
    run, record = _held()
    run.tick(5)
    run.open.remove(record)
    run.send(m.ActivityFailed(record.id, "database away", run.now))
    assert run.state.first_failure == "b" and "k" not in run.state.flights
    assert _finish(run)["status"] == "failed"
    _replays(run)


def test_the_held_retry_ends_with_the_run_when_the_record_read_a_cancel() -> None:
    run, record = _held()
    run.tick(5)
    run.answer(record, {"status": "running", "cancel_requested": True})
    assert "k" not in run.state.flights
    end = _finish(run)
    assert (end["status"], end["error"]) == ("cancelled", "cancelled")
    _replays(run)


TWO_READERS: list[dict[str, Any]] = [
    {"id": "a", "action": "x", "depends_on": []},
    {"id": "b", "action": "x", "depends_on": []},
    {"id": "c", "action": "x", "depends_on": ["a"], "v": "${steps.a.output.p}"},
    {"id": "d", "action": "x", "depends_on": ["b"], "w": "${steps.b.output.p}"},
]


def test_a_second_unreadable_output_whose_reader_has_not_started_adds_no_second_record() -> None:
    """The first record stops the run once applied: d never starts, as any step after a run's failure."""
    run = Recorded(TWO_READERS, reused={"a": BLOB, "b": BLOB})
    load_a, load_b = run.activities(m.Activity.LOAD_OUTPUT)
    run.answer_all(m.Activity.DISPATCH_STEPS)
    run.open.remove(load_a)
    (record,) = _calls(run.send(m.ActivityFailed(load_a.id, "blob gone", run.now)), m.Activity.DISPATCH_STEPS)
    run.open.remove(load_b)
    assert run.send(m.ActivityFailed(load_b.id, "blob gone", run.now)) == []
    assert not run.state.stopping
    run.answer(record)
    end = _finish(run)
    assert (end["status"], end["failed_step"]) == ("failed", "c")
    assert run.state.views["d"] == {"state": "pending"}
    _replays(run)


def test_under_rules_7_the_second_unreadable_output_is_applied_as_recorded() -> None:
    run = Recorded(TWO_READERS, reused={"a": BLOB, "b": BLOB}, rules=7)
    load_a, load_b = run.activities(m.Activity.LOAD_OUTPUT)
    run.answer_all(m.Activity.DISPATCH_STEPS)
    run.open.remove(load_a)
    run.send(m.ActivityFailed(load_a.id, "blob gone", run.now))
    assert run.state.first_failure == "a"
    run.open.remove(load_b)
    run.send(m.ActivityFailed(load_b.id, "blob gone", run.now))
    end = _finish(run)
    assert (end["status"], end["failed_step"]) == ("failed", "a")
    _replays(run)


# ----------------------------------------------------------------------------------------------- properties
STEPS: list[dict[str, Any]] = [
    {"id": "a", "action": "x", "depends_on": []},
    {"id": "b", "action": "x", "depends_on": [], "retry": {"max_attempts": 2, "initial_interval_s": 1}, "timeout_s": 5},
    {"id": "k", "action": "x", "depends_on": [], "retry": {"max_attempts": 3, "initial_interval_s": 1}},
    {
        "id": "c",
        "action": "x",
        "depends_on": ["a", "b"],
        "v": "${steps.a.output.p}",
        "w": "${steps.b.output.p}",
        "u": "${steps.r.output.p}",
        "t": "${steps.s.output.p}",
        "compensate": {"action": "undo"},
    },
    {"id": "d", "action": "x", "depends_on": ["r"], "v": "${steps.r.output.p}", "compensate": {"action": "undo"}},
    {"id": "r", "action": "x", "depends_on": []},
    {"id": "s", "action": "x", "depends_on": []},
]
REUSED = {
    "r": {"$blob": {"container": "c", "name": "r", "size": 10, "sha256": "2" * 64}},
    "s": {"$blob": {"container": "c", "name": "s", "size": 10, "sha256": "3" * 64}},
}
HELD_STEPS: list[dict[str, Any]] = [
    {"id": "a", "action": "x", "depends_on": []},
    {"id": "k", "action": "x", "depends_on": [], "retry": {"max_attempts": 9, "initial_interval_s": 1}},
    {"id": "c", "action": "x", "depends_on": ["a"], "v": "${steps.a.output.p}", "compensate": {"action": "undo"}},
]


@dataclass(frozen=True)
class Shape:
    """The steps of a random run, the stored outputs it reuses, and the verdicts some steps always have."""

    steps: list[dict[str, Any]]
    reused: dict[str, Any] = field(default_factory=dict)
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreadable: bool = False  # every stored output fails to read, whatever the pick


WIDE = Shape(STEPS, REUSED)
# Few steps, k always failing and a's output always stored and unreadable: a random run often has k's retry due
# while the failure of a's output is being recorded.
HELD = Shape(
    HELD_STEPS, verdicts={"k": {"ok": False, "error": "e"}, "a": {"ok": True, "output": BLOB}}, unreadable=True
)
Choice = tuple[str, int, bool]
choices = st.lists(
    st.tuples(st.sampled_from(["answer", "result", "timer", "cancel", "fail"]), st.integers(0, 5), st.booleans()),
    max_size=40,
)
# What may fail for good in these runs (a status that cannot be recorded stops the orchestration instead).
FALLIBLE = (m.Activity.DISPATCH_STEPS, m.Activity.RECORD_OUTCOMES, m.Activity.LOAD_OUTPUT)


class Driven:
    """A random but well-formed run of a shape's steps: module outputs are stored (a blob reference) on every other
    pick and read back before a reader resolves; a read fails for good when the pick says so, a dispatch's answer says
    on some picks that a cancel was recorded first, and dispatches and records of outcomes may fail for good."""

    def __init__(self, rules: int, shape: Shape = WIDE) -> None:
        self.now = T0
        self.shape = shape
        self.state, commands = m.begin(request(shape.steps, reused=shape.reused, rules=rules), self.now)
        self.log: list[m.Command] = []
        self.events: list[m.Event] = []
        self.open: list[m.CallActivity] = []
        self.waits: list[str] = []
        self.timers: list[tuple[m.Event, list[m.Command]]] = []
        self.held_starts: list[m.StepStart] = []  # run attempts started by a reduction while a failure was recorded
        self.stopped_starts: list[m.StepStart] = []  # run attempts started by a reduction of a run already stopping
        self.take(commands)

    def take(self, commands: list[m.Command]) -> None:
        self.log += commands
        self.open += [c for c in commands if isinstance(c, m.CallActivity)]
        self.waits += [c.name for c in commands if isinstance(c, m.WaitForEvent) and c.name != "cancel"]

    def send(self, event: m.Event) -> None:
        self.events.append(event)
        recording = any(p.failure is not None for p in self.state.pending.values())
        stopping = self.state.stopping
        self.state, commands = m.reduce(self.state, event)
        started = [s for d in _dispatches(commands) for s in d.starts if s.phase is m.Phase.RUN]
        if recording:
            self.held_starts += started
        if stopping:
            self.stopped_starts += started
        if isinstance(event, m.TimerFired):
            self.timers.append((event, commands))
        self.take(commands)

    def pick(self, kind: str, index: int, flag: bool) -> None:
        output: Any = BLOB if index % 2 == 0 else {"p": index}
        if kind == "answer" and self.open:
            command = self.open.pop(index % len(self.open))
            if command.name is m.Activity.LOAD_OUTPUT:
                self.send(
                    m.ActivityFailed(command.id, "blob gone", self.now)
                    if flag or self.shape.unreadable
                    else m.ActivityDone(command.id, {"p": index}, self.now)
                )
                return
            answer = default_answer(command)
            if isinstance(command.input, m.DispatchSteps):
                answer["cancel_requested"] = flag and index % 3 == 2
                if flag and index % 3 != 2:
                    answer["results"] = {
                        f"{s.phase.value}:{s.step_id}:{s.attempt}": self.verdict(
                            s.step_id, {"ok": index < 4, "output": output, "error": "e"}
                        )
                        for s in command.input.starts
                    }
            self.send(m.ActivityDone(command.id, answer, self.now))
        elif kind == "fail":
            fallible = [c for c in self.open if c.name in FALLIBLE]
            if fallible:
                command = fallible[index % len(fallible)]
                self.open.remove(command)
                self.send(m.ActivityFailed(command.id, "database away", self.now))
        elif kind == "result" and self.waits:
            name = self.waits.pop(index % len(self.waits))
            verdict = self.verdict(name.split(":")[1], {"ok": flag, "output": output, "error": "e"})
            self.send(m.EventRaised(name, verdict, self.now))
        elif kind == "timer":
            self.now += timedelta(seconds=index)
            self.send(m.TimerFired(self.now))
        elif kind == "cancel" and flag:
            self.send(m.EventRaised("cancel", {}, self.now))

    def verdict(self, step_id: str, picked: dict[str, Any]) -> dict[str, Any]:
        return self.shape.verdicts.get(step_id, picked)

    def drain(self) -> None:
        """Everything out answered as it would be (reads still failing), every result ok unless the shape says
        otherwise, every timer fired."""
        for _ in range(300):
            if self.complete is not None:
                return
            if self.open:
                command = self.open.pop(0)
                if command.name is m.Activity.LOAD_OUTPUT:
                    self.send(m.ActivityFailed(command.id, "blob gone", self.now))
                else:
                    self.send(m.ActivityDone(command.id, default_answer(command), self.now))
            elif self.waits:
                name = self.waits.pop(0)
                verdict = self.verdict(name.split(":")[1], {"ok": True, "output": {"p": 0}})
                self.send(m.EventRaised(name, verdict, self.now))
            elif self.state.timer_at is not None:
                self.now = max(self.now, self.state.timer_at)
                self.send(m.TimerFired(self.now))
            else:
                raise AssertionError(f"stuck: nothing out, no timer, not ended: {self.state}")
        raise AssertionError("the run did not end")

    @property
    def complete(self) -> dict[str, Any] | None:
        done = [c for c in self.log if isinstance(c, m.Complete)]
        return done[-1].result if done else None


def _driven(picks: list[Choice], shape: Shape = WIDE, rules: int = m.RULES) -> Driven:
    run = Driven(rules, shape)
    for choice in picks:
        run.pick(*choice)
    return run


def _replay(events: list[m.Event], shape: Shape = WIDE, rules: int = m.RULES) -> tuple[m.State, list[m.Command]]:
    state, commands = m.begin(request(shape.steps, reused=shape.reused, rules=rules), T0)
    log = list(commands)
    for event in events:
        state, commands = m.reduce(state, event)
        log += commands
    return state, log


def _dispatches(log: list[m.Command]) -> list[m.DispatchSteps]:
    return [c.input for c in _calls(log, m.Activity.DISPATCH_STEPS) if isinstance(c.input, m.DispatchSteps)]


@pytest.mark.parametrize("shape", [WIDE, HELD], ids=["wide", "held"])
@settings(max_examples=400, deadline=None)
@given(picks=choices)
def test_runs_reading_stored_outputs_back_replay_into_the_same_commands_and_end(
    picks: list[Choice], shape: Shape
) -> None:
    run = _driven(picks, shape)
    replayed, log = _replay(run.events, shape)
    assert log == run.log and replayed == run.state
    restored = m.State.model_validate(run.state.model_dump(mode="json"))
    probe = m.TimerFired(T0 + timedelta(days=1))
    assert m.reduce(restored, probe)[1] == m.reduce(run.state, probe)[1]
    run.drain()
    replayed, log = _replay(run.events, shape)
    assert log == run.log and replayed == run.state


@pytest.mark.parametrize("shape", [WIDE, HELD], ids=["wide", "held"])
@settings(max_examples=400, deadline=None)
@given(picks=choices)
def test_while_an_unread_outputs_failure_is_recorded_nothing_starts_and_one_record_is_out(
    picks: list[Choice], shape: Shape
) -> None:
    run = _driven(picks, shape)
    run.drain()
    dispatches = _dispatches(run.log)
    recorded = [d for d in dispatches if any(UNREAD in (n.error or "") for n in d.notes)]
    assert len(recorded) <= 1  # a second output that cannot be read changes nothing beside the first record
    # No attempt, no retry starts while the record is out, nor as its answer is applied (the run stops then).
    assert run.held_starts == []
    # Nor once the run is stopping (cancelled, or failed): a retry whose dispatch failed for good after the run began
    # stopping was started by the next timer.
    assert run.stopped_starts == []
    end = run.complete
    assert end is not None
    if end.get("failed_step") is not None:
        assert run.state.views[end["failed_step"]]["state"] != "succeeded", end  # never a step that succeeded
    for fired, commands in run.timers:
        # A timer is never armed for a moment already past when it fires (a held retry would re-arm it at once).
        assert all(c.at > fired.now for c in commands if isinstance(c, m.SetTimer)), (fired, commands)


def _answer(run: Driven, name: m.Activity, result: Any = None, *, failed: bool = False) -> m.CallActivity:
    command = next(c for c in run.open if c.name is name)
    run.open.remove(command)
    if failed:
        run.send(m.ActivityFailed(command.id, "blob gone", run.now))
    else:
        run.send(m.ActivityDone(command.id, default_answer(command) if result is None else result, run.now))
    return command


def test_the_property_runs_do_hold_a_retry_and_read_a_cancel_from_the_record() -> None:
    """The properties above are about the rules-8 paths: a run of their events holds a retry while an unread output's
    failure is recorded, that record reads a cancel, and the run ends cancelled."""
    run = _driven([])
    _answer(run, m.Activity.LOAD_OUTPUT, {"p": 1})
    _answer(run, m.Activity.LOAD_OUTPUT, {"p": 2})
    _answer(run, m.Activity.DISPATCH_STEPS)  # the move to running
    _answer(run, m.Activity.DISPATCH_STEPS)  # a, b, k and d running
    run.send(m.EventRaised("run:k:1", {"ok": False, "error": "e"}, run.now))
    _answer(run, m.Activity.DISPATCH_STEPS)  # k's retry, in 1 s, recorded
    run.send(m.EventRaised("run:a:1", {"ok": True, "output": BLOB}, run.now))
    _answer(run, m.Activity.LOAD_OUTPUT, failed=True)  # a's stored output cannot be read
    (record,) = run.open
    assert isinstance(record.input, m.DispatchSteps) and any(UNREAD in (n.error or "") for n in record.input.notes)
    run.pick("timer", 2, False)
    assert run.state.flights["k"].stage is m.Stage.PAUSED  # due, held
    _answer(run, m.Activity.DISPATCH_STEPS, {"status": "running", "cancel_requested": True})
    run.drain()
    assert run.complete is not None and run.complete["status"] == "cancelled"
    assert "k" not in run.state.flights and run.state.views["k"]["state"] == "cancelled"
    assert _replay(run.events)[1] == run.log
