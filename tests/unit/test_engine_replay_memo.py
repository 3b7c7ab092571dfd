# intent_ref: platform.execution
"""Replays that reuse remembered reductions give exactly what reducing from the start gives."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.engine import machine as m
from shared.engine import replay_memo
from shared.engine.replay_memo import ReplayMemo, fingerprint
from tests.unit.test_engine_machine import PLAN, STEPS, T0, Choice, choices, default_answer, drive, request


def _mark(event: m.Event) -> tuple[str, str, Any]:
    key = getattr(event, "id", None) or getattr(event, "name", None)
    return fingerprint(type(event).__name__, key, event.now)


def _episode(
    memo: ReplayMemo, events: list[m.Event], calls: list[int], name: str = "instance", inputs: Any = None
) -> tuple[m.State, list[m.Command]]:
    """One episode: the whole history replayed through the memo; counts the start requests it had to parse."""

    def start_request() -> dict[str, Any]:
        calls.append(1)
        return request(STEPS, plan=PLAN, inputs=inputs or {})

    replay = memo.begin(name, T0, start_request)
    state, commands = replay.start
    log = list(commands)
    for event in events:
        state, commands = replay.reduce(state, _mark(event), lambda event=event: event)  # type: ignore[misc]
        log += commands
    return state, log


@settings(max_examples=100, deadline=None)
@given(choices, st.lists(st.integers(0, 40), max_size=8))
def test_episodes_through_the_memo_give_what_reducing_from_the_start_gives(
    picks: list[Choice], cuts: list[int]
) -> None:
    state, log, events = drive(picks)
    memo, calls = ReplayMemo(), []
    # The history grows episode by episode; each episode replays all of it.
    for end in sorted({min(cut, len(events)) for cut in cuts} | {len(events)}):
        replayed, replay_log = _episode(memo, events[:end], calls)
        expected_state, expected_log = m.begin(request(STEPS, plan=PLAN), T0)
        expected = list(expected_log)
        for event in events[:end]:
            expected_state, commands = m.reduce(expected_state, event)
            expected += commands
        assert replayed == expected_state and replay_log == expected
    assert replayed == state and replay_log == log
    assert len(calls) == 1  # the start was parsed and reduced once for all episodes


def test_an_event_that_was_never_committed_is_not_reused_in_its_place() -> None:
    memo, calls = ReplayMemo(), []
    state, commands = m.begin(request(STEPS, plan=PLAN), T0)
    dispatch = next(c for c in commands if isinstance(c, m.CallActivity))
    answered = m.ActivityDone(dispatch.id, default_answer(dispatch), T0)
    # An episode saw the dispatch answered and the timer fire; its commit failed, so that timer is not history.
    lost = m.TimerFired(T0 + timedelta(seconds=5))
    _episode(memo, [answered, lost], calls)
    # The next attempt sees the same timer fire at another time: the same task, another history.
    fired = m.TimerFired(T0 + timedelta(minutes=5))
    replayed, replay_log = _episode(memo, [answered, fired], calls)
    expected_state, expected_log = m.begin(request(STEPS, plan=PLAN), T0)
    expected = list(expected_log)
    for event in (answered, fired):
        expected_state, more = m.reduce(expected_state, event)
        expected += more
    assert replayed == expected_state and replay_log == expected
    after_answer = m.reduce(m.begin(request(STEPS, plan=PLAN), T0)[0], answered)[0]
    assert m.reduce(after_answer, lost) != m.reduce(after_answer, fired)  # reusing the lost one would show


def test_another_generation_or_a_restart_starts_afresh() -> None:
    memo, calls = ReplayMemo(), []
    memo.begin("instance", T0, lambda: (calls.append(1), request(STEPS, plan=PLAN))[1])
    memo.begin("instance", T0, lambda: (calls.append(1), request(STEPS, plan=PLAN))[1])
    assert len(calls) == 1
    later = memo.begin("instance", T0 + timedelta(seconds=1), lambda: (calls.append(1), request(STEPS, plan=PLAN))[1])
    assert len(calls) == 2 and later.start[0].spec.execution_id
    memo.forget("instance")
    memo.begin("instance", T0 + timedelta(seconds=1), lambda: (calls.append(1), request(STEPS, plan=PLAN))[1])
    assert len(calls) == 3


def test_the_memo_forgets_the_least_recently_run_instance_beyond_its_capacity() -> None:
    memo, calls = ReplayMemo(capacity=2), []

    def start() -> dict[str, Any]:
        calls.append(1)
        return request(STEPS, plan=PLAN)

    for name in ("a", "b", "a", "c", "a", "b"):
        memo.begin(name, T0, start)
    # a, b, (a remembered), c evicts b, (a remembered), b again
    assert len(calls) == 4


_STEPS: list[dict[str, Any]] = STEPS  # type: ignore[assignment]  # the machine tests' table, typed loosely


def _expected(events: list[m.Event], inputs: Any = None) -> tuple[m.State, list[m.Command]]:
    state, commands = m.begin(request(_STEPS, plan=PLAN, inputs=inputs or {}), T0)
    log = list(commands)
    for event in events:
        state, commands = m.reduce(state, event)
        log += commands
    return state, log


def _sized(kilobytes: int) -> dict[str, Any]:
    return {"big": "x" * (kilobytes * 1024)}


def test_the_memo_never_holds_more_than_its_budget_and_counts_what_it_forgets() -> None:
    picks = [(kind, i, ok) for i in range(4) for kind in ("answer", "result", "timer") for ok in (True, False)]
    _, _, events = drive(picks)
    budget = 400 * 1024
    memo, calls = ReplayMemo(budget_bytes=budget, chain_ceiling_bytes=200 * 1024), list[int]()
    for _ in range(3):
        for i, kilobytes in enumerate((1, 30, 60, 90, 5, 45)):
            for end in (2, len(events) // 2, len(events)):
                replayed = _episode(memo, events[:end], calls, name=f"i{i}", inputs=_sized(kilobytes))
                assert replayed == _expected(events[:end], _sized(kilobytes))
                assert 0 < memo.size <= budget
        assert 1 < len(memo) < 6  # some, not all, are remembered
    for i in range(6):
        memo.forget(f"i{i}")
    assert memo.size == 0 and len(memo) == 0  # the accounting follows every chain in and out


def test_a_chain_over_the_ceiling_is_not_remembered_and_its_replay_gives_the_same_result() -> None:
    picks = [(kind, i, ok) for i in range(4) for kind in ("answer", "result", "timer") for ok in (True, False)]
    _, _, events = drive(picks)
    memo, calls = ReplayMemo(chain_ceiling_bytes=64 * 1024), list[int]()
    for end in (0, 3, len(events)):
        assert _episode(memo, events[:end], calls, inputs=_sized(100)) == _expected(events[:end], _sized(100))
    assert len(calls) == 3 and len(memo) == 0 and memo.size == 0  # every episode began afresh
    # A chain that starts small and grows past the ceiling with its history is dropped, and replays still agree.
    start = replay_memo.CHAIN_OVERHEAD + replay_memo.estimate(request(_STEPS, plan=PLAN, inputs={}), 1 << 30)
    memo, calls = ReplayMemo(chain_ceiling_bytes=start + 3 * replay_memo.STEP_OVERHEAD), list[int]()
    assert _episode(memo, events[:2], calls) == _expected(events[:2])
    assert len(memo) == 1
    for _ in range(2):
        assert _episode(memo, events, calls) == _expected(events)
        assert len(memo) == 0 and memo.size == 0
    assert len(calls) == 2  # remembered until it grew past the ceiling, then begun afresh


def test_eviction_by_size_forgets_the_least_recently_run_chains_first() -> None:
    memo = ReplayMemo(budget_bytes=450 * 1024)
    calls: dict[str, int] = {}

    def begin(name: str, kilobytes: int) -> None:
        def start() -> dict[str, Any]:
            calls[name] = calls.get(name, 0) + 1
            return request(_STEPS, plan=PLAN, inputs=_sized(kilobytes))

        memo.begin(name, T0, start)

    for name in ("a", "b", "c"):
        begin(name, 10)
    begin("big", 300)
    begin("a", 10)  # recently run again
    begin("huge", 40)  # over the budget with the rest: "b" and "c", the least recently run small ones, go first
    assert memo.size <= 450 * 1024
    for name in ("a", "big", "huge", "b"):
        begin(name, {"b": 10}.get(name, 0))
    assert calls == {"a": 1, "b": 2, "c": 1, "big": 1, "huge": 1}


def test_many_waiting_executions_with_a_large_input_stay_within_the_budget() -> None:
    # The reviewer's script: 1,000 waiting executions with a 1 MB input each held about 1 GB per process.
    memo = ReplayMemo()
    steps = [
        {"id": "w", "action": "wait", "seconds": 86400},
        {"id": "e", "action": "event.emit", "type": "a.b", "data": {"v": "${inputs.big}"}},
    ]
    for i in range(1000):
        started = {"execution_id": f"e-{i}", "tenant_id": "t", "rules": m.RULES, "definition": {"steps": steps}}
        big = {"big": f"{i:07d}" + "x" * 1_000_000}
        memo.begin(f"e-{i}", T0, lambda started=started, big=big: {**started, "inputs": big})  # type: ignore[misc]
        assert memo.size <= replay_memo.BUDGET_BYTES
    assert memo.size >= len(memo) * 1_000_000  # each chain is counted at least at its input's size
    assert 200 < len(memo) < 300
