# intent_ref: platform.execution
"""The reducer at its edges: a child that times out, tenant `wait` values no time can be made of, reused order."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.engine import machine as m
from shared.registry.model import MAX_TIMEOUT_S
from shared.registry.references import MAX_RESOLVED_CHARS
from tests.unit.test_engine_machine import T0, Run, request, starts

CHILD_PLAN = {"child": {"kind": "intent", "timeout_s": 600}}


def cancels(run: Run) -> list[m.CallActivity]:
    return [c for c in run.log if isinstance(c, m.CallActivity) and c.name is m.Activity.CANCEL_CHILD]


def child_started(run: Run, execution_id: str) -> list[m.Command]:
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    return run.answer(dispatch, {"status": "running", "children": {"child": {"execution_id": execution_id}}})


def settle_everything(run: Run) -> None:
    for _ in range(10):
        if run.complete is not None:
            return
        run.answer_all()


def test_a_child_that_times_out_is_told_to_cancel_once() -> None:
    """Under rules 3 to 10 (rules 11 waits for the child: tests/unit/test_engine_rules11_machine.py)."""
    run = Run([{"id": "child", "action": "intent.run", "intent": "deploy-db"}], plan=CHILD_PLAN, rules=10)
    child_started(run, "c-1")
    commands = run.tick(601)
    calls = [c for c in commands if isinstance(c, m.CallActivity)]
    assert [c.input for c in calls if c.name is m.Activity.CANCEL_CHILD] == [
        m.CancelChild(tenant_id="t-1", execution_id="e-1", child_execution_id="c-1")
    ]
    (settle,) = [c.input for c in calls if isinstance(c.input, m.RecordOutcomes)]
    assert settle.outcomes[0].state == "timed_out"
    settle_everything(run)
    assert len(cancels(run)) == 1  # the failure that follows does not tell it again
    assert run.complete is not None and run.complete["error"] == "step child timed out after 600 s"


def test_a_timed_out_child_is_cancelled_before_its_retry_starts_another() -> None:
    """Under rules 3 to 10 (rules 11 starts the retry only once the child has ended)."""
    run = Run(
        [
            {
                "id": "child",
                "action": "intent.run",
                "intent": "deploy-db",
                "retry": {"max_attempts": 2, "initial_interval_s": 1},
            }
        ],
        plan=CHILD_PLAN,
        rules=10,
    )
    child_started(run, "c-1")
    run.tick(601)
    run.answer_all(m.Activity.RECORD_OUTCOMES)
    run.answer_all(m.Activity.DISPATCH_STEPS)  # records the retry
    run.tick(1)
    (retry,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert starts(retry) == [("child", "run", 2)]
    started = child_started(run, "c-2")
    second = m.StartChild("child", 2, "c-2", {})
    assert second in started
    (cancel,) = cancels(run)
    assert cancel.input == m.CancelChild(tenant_id="t-1", execution_id="e-1", child_execution_id="c-1")
    assert run.log.index(cancel) < run.log.index(retry) < run.log.index(second)
    run.answer(cancel, True)
    # The first child ends cancelled (it compensated itself): that attempt is over and counts for nothing.
    assert run.send(m.ChildEnded("child", 1, {"status": "cancelled", "error": "cancelled"}, False, run.now)) == []
    run.send(m.ChildEnded("child", 2, {"status": "succeeded", "outputs": {"db": 1}}, False, run.now))
    settle_everything(run)
    assert run.complete is not None and run.complete["status"] == "succeeded"
    assert len(cancels(run)) == 1


class NaiveRun(Run):
    """A run whose clock has no zone, as an orchestration's replay-safe UTC time may come."""

    def __init__(self, steps: list[dict[str, Any]], **extra: Any) -> None:
        self.now = T0.replace(tzinfo=None)
        self.state, commands = m.begin(request(steps, **extra), self.now)
        self.log, self.open = [], []
        self.take(commands)


def wait_after(params: dict[str, Any], output: Any, *, naive: bool = False) -> Run:
    """A wait that starts once step `a` answered `output`; retryable, so only a failure that cannot retry ends it."""
    run = (NaiveRun if naive else Run)(
        [
            {"id": "a", "action": "x"},
            {"id": "w", "action": "wait", "depends_on": ["a"], "retry": {"max_attempts": 3}, **params},
        ],
        plan={"w": {"kind": "wait"}},
    )
    run.answer_all()
    run.result("a", output=output)
    return run


@pytest.mark.parametrize(
    ("params", "output", "error", "naive"),
    [
        ({"until": "tomorrow"}, None, "wait: until 'tomorrow' is not an ISO 8601 date-time", False),
        ({"until": "${steps.a.output.at}"}, {"at": "tomorrow"}, "wait: until 'tomorrow' is not", False),
        ({"until": "${steps.a.output.at}"}, {"at": ["x"]}, 'wait: until ["x"] is not an ISO 8601 date-time', False),
        (
            {"until": "${steps.a.output.at}"},
            {"at": "0001-01-01T00:00:00+01:00"},
            "wait: until '0001-01-01T00:00:00+01:00' is out of range",
            True,  # moved onto a clock without a zone, it falls before year 1
        ),
        ({"seconds": "${steps.a.output.s}"}, {"s": "abc"}, "wait: seconds 'abc' is not a number", False),
        ({"seconds": "${steps.a.output.s}"}, {"s": {"n": 1}}, 'wait: seconds {"n": 1} is not a number', False),
        # Beyond what a timedelta holds; then within one, but past year 9999.
        ({"seconds": "${steps.a.output.s}"}, {"s": 1e20}, "wait: seconds 1e+20 is out of range", False),
        ({"seconds": "${steps.a.output.s}"}, {"s": 1e12}, "wait: seconds 1000000000000.0 is out of range", False),
        ({"seconds": "${steps.a.output.s}"}, {"s": "nan"}, "wait: seconds 'nan' is out of range", False),
    ],
)
def test_a_wait_value_no_time_can_be_made_of_fails_its_step_without_a_retry(
    params: dict[str, Any], output: Any, error: str, naive: bool
) -> None:
    run = wait_after(params, output, naive=naive)
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert isinstance(dispatch.input, m.DispatchSteps) and dispatch.input.starts == []
    (note,) = dispatch.input.notes
    assert (note.kind, note.step_id, note.attempt) == (m.NoteKind.FAILED, "w", 1)
    assert note.error is not None and error in note.error
    assert "w" not in run.state.flights
    settle_everything(run)
    assert run.complete is not None
    assert (run.complete["status"], run.complete["failed_step"]) == ("failed", "w")
    assert error in run.complete["error"]


def test_a_wait_until_in_lower_case_rfc_3339_ends_then() -> None:
    run = wait_after({"until": "2026-01-01t00:00:10z"}, None)  # T0 plus 10 s; the save-time check accepts it
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert starts(dispatch) == [("w", "run", 1)]
    run.answer(dispatch)
    assert run.state.flights["w"].ends_at == T0 + timedelta(seconds=10)


COMPENSATED: list[dict[str, Any]] = [
    # app is listed first but depends on db (depends_on may name a later step); both are undone on failure.
    {"id": "app", "action": "x", "depends_on": ["db"], "compensate": {"action": "undo", "what": "app"}},
    {"id": "db", "action": "x", "depends_on": [], "compensate": {"action": "undo", "what": "db"}},
    {"id": "verify", "action": "x", "depends_on": ["app"]},
]


def compensated_in_order(run: Run) -> list[str]:
    """Fail `verify`, then let every compensation succeed as it starts; the steps in the order they were undone."""
    run.answer_all()
    run.result("verify", ok=False)
    undone: list[str] = []
    for _ in range(10):
        run.answer_all()
        for command in run.log:
            if isinstance(command, m.CallActivity) and isinstance(command.input, m.DispatchSteps):
                for step_id, phase, _ in starts(command):
                    if phase == "compensate" and step_id not in undone:
                        undone.append(step_id)
                        run.send(m.EventRaised(f"compensate:{step_id}:1", {"ok": True}, run.now))
    assert run.complete is not None and run.complete["compensated"] == undone
    return undone


def test_a_fresh_run_compensates_in_reverse_completion_order() -> None:
    run = Run(COMPENSATED)
    run.answer_all()
    run.result("db")
    run.answer_all()
    run.result("app")
    assert run.state.order == ("db", "app")
    assert compensated_in_order(run) == ["app", "db"]


def test_a_retry_compensates_reused_steps_dependents_first_whatever_their_position() -> None:
    # Reused outputs come in the order of the steps' positions in the definition: app before db.
    run = Run(COMPENSATED, reused={"app": {"id": 1}, "db": {"id": 2}})
    assert run.state.order == ("db", "app")
    assert compensated_in_order(run) == ["app", "db"]


# -- an execution started before these rules replays the commands it recorded (ADR 0025) ----------------------------
def test_an_execution_started_under_rules_2_keeps_its_reused_order_and_its_timed_out_childs_silence() -> None:
    old = Run(COMPENSATED, reused={"app": {"id": 1}, "db": {"id": 2}}, rules=2)
    assert old.state.order == ("app", "db")
    # The start input of an execution from before rules were recorded has no `rules` at all.
    legacy = m.begin({k: v for k, v in request(COMPENSATED, reused={"app": {}, "db": {}}).items() if k != "rules"}, T0)
    assert legacy[0].spec.rules == 2 and legacy[0].order == ("app", "db")

    child = Run([{"id": "child", "action": "intent.run", "intent": "deploy-db"}], plan=CHILD_PLAN, rules=2)
    child_started(child, "c-1")
    child.tick(601)
    assert cancels(child) == []


# -- a dispatch that fails for good (rules 4) ---------------------------------------------------------------------
def failed_dispatch(run: Run) -> list[m.Command]:
    """The level's dispatch fails after its activity's retries (a database failover that outlasts them)."""
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    run.open.remove(dispatch)
    return run.send(m.ActivityFailed(dispatch.id, "connection refused", run.now))


def settles(commands: list[m.Command]) -> list[m.CallActivity]:
    return [c for c in commands if isinstance(c, m.CallActivity) and c.name is m.Activity.RECORD_OUTCOMES]


def test_a_dispatch_that_fails_for_good_settles_its_attempts_and_their_recorded_result_decides() -> None:
    # It may have committed its starts and published their work before it failed: a blind "could not start" ran
    # the step's next attempt beside the first, under another key, or abandoned work that had already succeeded.
    run = Run([{"id": "a", "action": "x"}, {"id": "b", "action": "x", "depends_on": ["a"]}])
    (settle,) = settles(failed_dispatch(run))
    assert isinstance(settle.input, m.RecordOutcomes)
    assert settle.input.outcomes == [
        m.Outcome(
            step_id="a",
            phase=m.Phase.RUN,
            attempt=1,
            ok=False,
            state="failed",
            error="could not start: connection refused",
            action="x",
        )
    ]
    run.answer(settle, [{"ok": True, "output": {"ran": 1}}])  # the worker had run it and recorded its result
    (next_level,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert starts(next_level) == [("b", "run", 1)]
    run.answer(next_level)
    run.result("b")
    settle_everything(run)
    assert run.complete is not None and run.complete["outputs"]["a"] == {"ran": 1}


def test_an_attempt_ended_as_not_started_is_retried_after_its_backoff() -> None:
    run = Run([{"id": "a", "action": "x", "retry": {"max_attempts": 2, "initial_interval_s": 1}}])
    (settle,) = settles(failed_dispatch(run))
    run.answer(settle, [{"ok": False, "error": "could not start: connection refused", "state": "failed"}])
    assert run.state.views["a"]["state"] == "retrying"
    run.answer_all(m.Activity.DISPATCH_STEPS)
    commands = run.tick(1)
    assert [starts(c) for c in commands if isinstance(c, m.CallActivity)] == [[("a", "run", 2)]]


def test_a_compensation_whose_dispatch_fails_names_its_own_action() -> None:
    steps = [
        {"id": "a", "action": "x", "compensate": {"action": "undo"}},
        {"id": "b", "action": "x", "depends_on": ["a"]},
    ]
    run = Run(steps)
    run.answer_all()
    run.result("a")
    run.answer_all()
    run.result("b", ok=False)
    for _ in range(3):
        dispatches = [
            c
            for c in run.activities(m.Activity.DISPATCH_STEPS)
            if isinstance(c.input, m.DispatchSteps) and c.input.starts
        ]
        if dispatches:
            break
        run.answer_all()
    (dispatch,) = dispatches
    assert starts(dispatch) == [("a", "compensate", 1)]
    run.open.remove(dispatch)
    (settle,) = settles(run.send(m.ActivityFailed(dispatch.id, "connection refused", run.now)))
    assert isinstance(settle.input, m.RecordOutcomes)
    (outcome,) = settle.input.outcomes
    assert (outcome.phase, outcome.action, outcome.error) == (
        m.Phase.COMPENSATE,
        "undo",
        "compensation of a could not start: connection refused",
    )


def test_an_execution_started_under_rules_3_retries_a_failed_dispatch_as_it_recorded() -> None:
    run = Run([{"id": "a", "action": "x", "retry": {"max_attempts": 2, "initial_interval_s": 1}}], rules=3)
    assert settles(failed_dispatch(run)) == []
    assert run.state.views["a"]["state"] == "retrying"


# -- references that multiply (rules 4) ----------------------------------------------------------------------------
AMPLIFIED = [
    {"id": "a", "action": "x"},
    {"id": "b", "action": "x", "depends_on": ["a"], "params": {"text": "${steps.a.output.body}" * 4000}},
]


def test_parameters_that_resolve_past_the_bound_fail_their_step_without_being_built() -> None:
    # A 90 KB definition repeating one reference to a 60 KB output resolved to 240 million characters, held in the
    # orchestration's state, sent as the dispatch's input and rebuilt on every replay.
    run = Run(AMPLIFIED)
    run.answer_all()
    run.result("a", output={"body": "x" * 60_000})
    dispatches = run.activities(m.Activity.DISPATCH_STEPS)
    assert [starts(c) for c in dispatches] == [[]]
    (dispatch,) = dispatches
    assert isinstance(dispatch.input, m.DispatchSteps)
    (note,) = dispatch.input.notes
    assert (note.kind, note.step_id) == (m.NoteKind.FAILED, "b")
    assert note.error == f"the parameters come to more than {MAX_RESOLVED_CHARS} characters once resolved"
    settle_everything(run)
    assert run.complete is not None and run.complete["status"] == "failed" and run.complete["failed_step"] == "b"


def test_parameters_within_the_bound_resolve_as_before() -> None:
    run = Run(AMPLIFIED[:1] + [{**AMPLIFIED[1], "params": {"text": "${steps.a.output.body}" * 30}}])
    run.answer_all()
    run.result("a", output={"body": "x" * 60_000})
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert isinstance(dispatch.input, m.DispatchSteps)
    (start,) = dispatch.input.starts
    assert start.params == {"text": "x" * 1_800_000}


def test_an_execution_started_under_rules_3_resolves_without_the_bound() -> None:
    run = Run(AMPLIFIED[:1] + [{**AMPLIFIED[1], "params": {"text": "${steps.a.output.body}" * 40}}], rules=3)
    run.answer_all()
    run.result("a", output={"body": "x" * 60_000})
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert isinstance(dispatch.input, m.DispatchSteps)
    assert [s.step_id for s in dispatch.input.starts] == ["b"]


# -- a child's stored outputs (rules 4) ----------------------------------------------------------------------------
STORED = {"$blob": {"container": "artifacts", "name": "t-1/executions/c-1/outputs/x.json", "size": 9, "sha256": "0"}}
READS_THE_CHILD = [
    {"id": "child", "action": "intent.run", "intent": "other"},
    {"id": "use", "action": "x", "depends_on": ["child"], "params": {"text": "${steps.child.output.outputs.big.body}"}},
]


def child_ended_with_a_stored_output(run: Run) -> list[m.Command]:
    child_started(run, "c-1")
    commands = run.send(m.ChildEnded("child", 1, {"status": "succeeded", "outputs": {"big": STORED}}, False, run.now))
    (settle,) = settles(commands)
    return run.answer(settle, [{"ok": True, "output": {"execution_id": "c-1", "outputs": {"big": STORED}}}])


def test_a_reference_into_a_childs_stored_output_reads_it_first() -> None:
    # A child's step output stored as a blob reached the parent as its reference, nested where no load looked: the
    # parent's step failed ("no 'body' in the referenced value"), or a module was handed the reference itself.
    run = Run(READS_THE_CHILD, plan=CHILD_PLAN)
    commands = child_ended_with_a_stored_output(run)
    (load,) = [c for c in commands if isinstance(c, m.CallActivity) and c.name is m.Activity.LOAD_OUTPUT]
    assert load.input == m.LoadOutput(
        tenant_id="t-1",
        output={"execution_id": "c-1", "outputs": {"big": STORED}},
        paths=[["outputs", "big", "body"]],
    )
    run.answer(load, {"outputs": {"big": {"body": "the body"}}})
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert isinstance(dispatch.input, m.DispatchSteps)
    assert [(s.step_id, s.params) for s in dispatch.input.starts] == [("use", {"text": "the body"})]


def test_an_execution_started_under_rules_3_reads_a_childs_output_as_it_came() -> None:
    run = Run(READS_THE_CHILD, plan=CHILD_PLAN, rules=3)
    commands = child_ended_with_a_stored_output(run)
    assert not any(isinstance(c, m.CallActivity) and c.name is m.Activity.LOAD_OUTPUT for c in commands)


# -- a retry policy without a cap (rules 4) ------------------------------------------------------------------------
UNCAPPED = [{"id": "s", "action": "x", "retry": {"max_attempts": 10, "initial_interval_s": 86400, "backoff": 100}}]


def test_a_retry_waits_at_most_the_longest_timeout_whatever_its_policy_grows_to() -> None:
    # Uncapped, the fifth retry's wait named a date past year 9999 and the reducer raised OverflowError.
    run = Run(UNCAPPED)
    run.answer_all()
    for attempt in range(1, 10):
        run.result("s", attempt=attempt, ok=False)
        run.answer_all(m.Activity.DISPATCH_STEPS)
        (timer,) = [c for c in run.open if isinstance(c, m.SetTimer)][-1:]
        assert timer.at - run.now <= timedelta(seconds=MAX_TIMEOUT_S)
        run.now = timer.at
        run.send(m.TimerFired(run.now))
        run.answer_all(m.Activity.DISPATCH_STEPS)
    run.result("s", attempt=10, ok=False)
    settle_everything(run)
    assert run.complete is not None and run.complete["status"] == "failed"


def test_an_execution_started_under_rules_3_keeps_its_uncapped_waits() -> None:
    run = Run(UNCAPPED, rules=3)
    run.answer_all()
    run.result("s", attempt=1, ok=False)
    run.answer_all(m.Activity.DISPATCH_STEPS)
    timer = [c for c in run.open if isinstance(c, m.SetTimer)][-1]
    run.now = timer.at
    run.send(m.TimerFired(run.now))
    run.answer_all(m.Activity.DISPATCH_STEPS)
    run.result("s", attempt=2, ok=False)
    run.answer_all(m.Activity.DISPATCH_STEPS)
    timer = [c for c in run.open if isinstance(c, m.SetTimer)][-1]
    assert timer.at - run.now == timedelta(seconds=86400 * 100)


def test_the_bound_counts_text_as_json_escapes_it() -> None:
    # Counted raw, text of quotes or control characters passed the bound at a sixth of its JSON size.
    run = Run(AMPLIFIED[:1] + [{**AMPLIFIED[1], "params": {"text": "${steps.a.output.body}" * 12}}])
    run.answer_all()
    run.result("a", output={"body": "\x01" * 60_000})  # 720,000 raw, six times that escaped
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert isinstance(dispatch.input, m.DispatchSteps)
    assert dispatch.input.starts == [] and dispatch.input.notes[0].kind is m.NoteKind.FAILED
