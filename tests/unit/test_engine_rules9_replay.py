# intent_ref: platform.execution
"""Random runs through the paths rules 9 changes (retries decided as the run stops, compensations given up), under
rules 8 and 9: a replay of the recorded events gives the same commands, every run ends, and under rules 9 no stopping
run records a retry and every compensation given up is recorded before the run's end."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.engine import machine as m
from tests.unit.test_engine_machine import T0, default_answer, request

STEPS: list[dict[str, Any]] = [
    {
        "id": "k",
        "action": "x",
        "timeout_s": 5,
        "depends_on": [],
        "retry": {"max_attempts": 3, "initial_interval_s": 2},
        "compensate": {"action": "undo"},
    },
    # Its compensation reads an `id` its output has on some picks only: otherwise it is given up.
    {
        "id": "a",
        "action": "x",
        "timeout_s": 5,
        "depends_on": [],
        "compensate": {"action": "undo", "id": "${steps.a.output.id}"},
    },
    {
        "id": "z",
        "action": "x",
        "timeout_s": 5,
        "depends_on": [],
        "retry": {"max_attempts": 2, "initial_interval_s": 1},
        "compensate": {"action": "undo", "id": "${steps.z.output.id}"},
    },
    {"id": "b", "action": "x", "timeout_s": 5, "depends_on": ["k", "a", "z"]},
]
# z's work is remote, so the first level is not carried on from (ADR 0036): events that come meanwhile are applied as
# they come, each in its own reduction, rather than held for the dispatch's answer and applied after it in one.
PLAN: dict[str, Any] = {"z": {"kind": "module", "remote": True, "timeout_s": 5}}
GIVEN_UP = "compensation parameters could not be resolved"
Choice = tuple[str, int, bool]
choices = st.lists(
    st.tuples(st.sampled_from(["answer", "result", "timer", "cancel"]), st.integers(0, 5), st.booleans()),
    max_size=50,
)


class Driven:
    """A random but well-formed run: timers jump far enough to time several attempts out in one record, verdicts
    are retryable or not and may say a cancel came first, outputs have the `id` compensations read on some picks."""

    def __init__(self, rules: int) -> None:
        self.rules = rules
        self.now = T0
        self.state, commands = m.begin(request(STEPS, plan=PLAN, rules=rules), self.now)
        self.log: list[m.Command] = []
        self.events: list[m.Event] = []
        self.open: list[m.CallActivity] = []
        self.waits: list[str] = []
        # Retrying notes sent by a reduction that left the run stopping; not one that applied events held for a
        # carrying dispatch's answer, each applied in a reduction of its own, whose commands are sent together.
        self.stopping_retries: list[m.StepNote] = []
        self.answered: set[str] = set()
        self.take(commands)

    def take(self, commands: list[m.Command]) -> None:
        self.log += commands
        self.open += [c for c in commands if isinstance(c, m.CallActivity)]
        self.waits += [c.name for c in commands if isinstance(c, m.WaitForEvent) and c.name != "cancel"]

    def send(self, event: m.Event) -> None:
        self.events.append(event)
        if isinstance(event, m.ActivityDone):
            self.answered.add(event.id)
        held = self.state.deferred
        self.state, commands = m.reduce(self.state, event)
        if self.state.stopping and not held:
            self.stopping_retries += [
                note
                for command in commands
                if isinstance(command, m.CallActivity) and isinstance(command.input, m.DispatchSteps)
                for note in command.input.notes
                if note.kind is m.NoteKind.RETRYING
            ]
        self.take(commands)

    @staticmethod
    def verdict(step_id: str, index: int, ok: bool) -> dict[str, Any]:
        if ok:
            return {"ok": True, "output": {"id": index} if index % 2 == 0 else {"other": index}}
        return {"ok": False, "error": f"{step_id} failed", "retryable": index % 3 != 1, "cancel_first": index == 5}

    def pick(self, kind: str, index: int, flag: bool) -> None:
        if kind == "answer" and self.open:
            command = self.open.pop(index % len(self.open))
            answer = default_answer(command)
            if isinstance(command.input, m.DispatchSteps):
                answer["cancel_requested"] = flag and index == 4
                if flag and index != 4:
                    # The dispatch answers its module attempts' results itself (ADR 0034), several in one answer.
                    answer["results"] = {
                        f"{s.phase.value}:{s.step_id}:{s.attempt}": self.verdict(s.step_id, index, index % 2 == 0)
                        for s in command.input.starts
                        if not s.remote
                    }
            elif isinstance(command.input, m.RecordOutcomes) and flag:
                answer = [{**verdict, "retryable": index % 3 != 1} for verdict in answer]
            self.send(m.ActivityDone(command.id, answer, self.now))
        elif kind == "result" and self.waits:
            name = self.waits.pop(index % len(self.waits))
            self.send(m.EventRaised(name, self.verdict(name.split(":")[1], index, flag), self.now))
        elif kind == "timer":
            self.now += timedelta(seconds=2 * index)
            self.send(m.TimerFired(self.now))
        elif kind == "cancel" and flag:
            self.send(m.EventRaised("cancel", {}, self.now))

    def drain(self) -> None:
        """Everything out answered as it would be, every result ok, every timer fired, until the run ends."""
        for _ in range(300):
            if self.complete is not None:
                return
            if self.open:
                command = self.open.pop(0)
                self.send(m.ActivityDone(command.id, default_answer(command), self.now))
            elif self.waits:
                name = self.waits.pop(0)
                self.send(m.EventRaised(name, self.verdict(name.split(":")[1], 1, True), self.now))
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

    def replayed(self) -> tuple[m.State, list[m.Command]]:
        state, commands = m.begin(request(STEPS, plan=PLAN, rules=self.rules), T0)
        log = list(commands)
        for event in self.events:
            state, commands = m.reduce(state, event)
            log += commands
        return state, log


def _driven(picks: list[Choice], rules: int) -> Driven:
    run = Driven(rules)
    for choice in picks:
        run.pick(*choice)
    return run


def _given_up_notes(log: list[m.Command]) -> list[tuple[str, m.StepNote]]:
    return [
        (command.id, note)
        for command in log
        if isinstance(command, m.CallActivity) and isinstance(command.input, m.DispatchSteps)
        for note in command.input.notes
        if note.kind is m.NoteKind.COMPENSATION_FAILED
    ]


@pytest.mark.parametrize("rules", [8, 9])
@settings(max_examples=300, deadline=None)
@given(picks=choices)
def test_a_recorded_run_replays_into_the_same_commands_under_the_rules_it_started_with(
    picks: list[Choice], rules: int
) -> None:
    run = _driven(picks, rules)
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state
    restored = m.State.model_validate(run.state.model_dump(mode="json"))
    probe = m.TimerFired(T0 + timedelta(days=1))
    assert m.reduce(restored, probe)[1] == m.reduce(run.state, probe)[1]
    run.drain()
    replayed, log = run.replayed()
    assert log == run.log and replayed == run.state


@settings(max_examples=300, deadline=None)
@given(picks=choices)
def test_under_rules_9_a_stopping_run_records_no_retry_and_every_compensation_given_up_before_its_end(
    picks: list[Choice],
) -> None:
    run = _driven(picks, 9)
    run.drain()
    assert run.stopping_retries == []
    given_up = {step_id for step_id, error in run.state.compensation_failed.items() if error.startswith(GIVEN_UP)}
    notes = _given_up_notes(run.log)
    assert sorted(note.step_id for _, note in notes) == sorted(given_up)
    assert all(note.error == run.state.compensation_failed[note.step_id] for _, note in notes)
    # Each record answered before the run's end is recorded (by that answer's reduction, or a later one): a dispatch
    # out beside the end's record found the execution ended and recorded nothing.
    answered = {e.id for e in run.events[: _event_that_ended(run) + 1] if isinstance(e, m.ActivityDone)}
    assert all(activity_id in answered for activity_id, _ in notes), (notes, run.events)


def _event_that_ended(run: Driven) -> int:
    """The index of the event whose reduction recorded the run's end: the events before it had been applied."""
    state, _ = m.begin(request(STEPS, plan=PLAN, rules=run.rules), T0)
    for index, event in enumerate(run.events):
        state, commands = m.reduce(state, event)
        if any(
            isinstance(c, m.CallActivity) and isinstance(c.input, m.RecordStatus) and c.input.status in m.TERMINAL
            for c in commands
        ):
            return index
    raise AssertionError("no end recorded")


@settings(max_examples=300, deadline=None)
@given(picks=choices)
def test_under_rules_8_no_compensation_given_up_is_recorded(picks: list[Choice]) -> None:
    run = _driven(picks, 8)
    run.drain()
    assert _given_up_notes(run.log) == []


def test_the_property_runs_do_reach_both_paths() -> None:
    """The properties above are about rules 9's paths: some run of their events decides a retry in the reduction that
    stops the run (recorded retrying under rules 8, not under rules 9) and gives a compensation up."""
    picks: list[Choice] = [("answer", 0, False), ("answer", 0, False), ("timer", 3, False)]
    picks += [("answer", 0, True)]  # one record: k's timeout (retryable), then a's and z's
    runs = {rules: _driven(picks, rules) for rules in (8, 9)}
    assert runs[8].stopping_retries and runs[8].state.stopping
    assert runs[9].stopping_retries == [] and runs[9].state.stopping
    # k and a succeed with an `id`, z without one (index 1), b fails: z's compensation is given up.
    picks = [("answer", 0, False), ("result", 0, True), ("result", 1, True), ("result", 0, True)]
    picks += [("answer", 0, False), ("result", 0, False)]
    given_up = {rules: _driven(picks, rules) for rules in (8, 9)}
    for run in given_up.values():
        run.drain()
        assert run.state.compensation_failed.keys() == {"z"} and run.state.compensated == ("a", "k")
    assert [note.step_id for _, note in _given_up_notes(given_up[9].log)] == ["z"]
    assert _given_up_notes(given_up[8].log) == []
