# intent_ref: platform.execution
"""Replays that reuse remembered reductions give exactly what reducing from the start gives."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.engine import machine as m
from shared.engine.replay_memo import ReplayMemo, fingerprint
from tests.unit.test_engine_machine import PLAN, STEPS, T0, Choice, choices, default_answer, drive, request


def _mark(event: m.Event) -> tuple[str, str, Any]:
    key = getattr(event, "id", None) or getattr(event, "name", None)
    return fingerprint(type(event).__name__, key, event.now)


def _episode(memo: ReplayMemo, events: list[m.Event], calls: list[int]) -> tuple[m.State, list[m.Command]]:
    """One episode: the whole history replayed through the memo; counts the start requests it had to parse."""

    def start_request() -> dict[str, Any]:
        calls.append(1)
        return request(STEPS, plan=PLAN)

    replay = memo.begin("instance", T0, start_request)
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
