# intent_ref: platform.execution
"""Reductions an orchestration already computed, reused when the Durable SDK replays its history.

Every episode runs the orchestrator from the start: `begin` on its input, then `reduce` once per finished task in
history order. The reducer is pure and its states are immutable, so within one process the result of a replayed
prefix is the one computed before; recomputing it made each episode cost as much as all the earlier ones together.
A chain per orchestration instance and generation (its first episode's orchestration time) keeps (event
fingerprint, state, commands) per position; a replay walks it and computes only what it has not seen. The
fingerprint names the task (kind and key) and the orchestration time of its completion, which history fixes: an
event that was never committed (an episode that failed) carries another time in the next attempt and misses, and a
restarted instance or a new generation starts at another time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.engine import machine

Reduction = tuple[machine.State, list[machine.Command]]
Fingerprint = tuple[str, str, datetime]

CAPACITY = 2048
"""Instances remembered per process (least recently run forgotten first); a forgotten one is recomputed."""


@dataclass(eq=False)
class _Chain:
    started_at: datetime
    start: Reduction
    steps: list[tuple[Fingerprint, Reduction]] = field(default_factory=list)


class Replay:
    """One episode's walk along its instance's chain."""

    def __init__(self, chain: _Chain) -> None:
        self._chain = chain
        self._position = 0

    @property
    def start(self) -> Reduction:
        return self._chain.start

    def reduce(self, state: machine.State, fingerprint: Fingerprint, event: Callable[[], machine.Event]) -> Reduction:
        """`machine.reduce(state, event())`, remembered at this position under `fingerprint`."""
        steps, position = self._chain.steps, self._position
        self._position += 1
        if position < len(steps) and steps[position][0] == fingerprint:
            return steps[position][1]
        reduction = machine.reduce(state, event())
        del steps[position:]  # what followed a different event is not this history's
        steps.append((fingerprint, reduction))
        return reduction


class ReplayMemo:
    """Chains of reductions per orchestration instance, bounded, shared by the episodes of one process."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._chains: OrderedDict[str, _Chain] = OrderedDict()
        self._lock = threading.Lock()  # episodes of different instances run on different threads

    def begin(self, instance_id: str, now: datetime, start_request: Callable[[], dict[str, Any]]) -> Replay:
        """The replay of `instance_id`'s generation that started at `now` (its first episode's orchestration time:
        a later generation or a restart starts later); `start_request` gives its input when not remembered."""
        with self._lock:
            chain = self._chains.get(instance_id)
            if chain is not None:
                self._chains.move_to_end(instance_id)
        if chain is None or chain.started_at != now:
            chain = _Chain(now, machine.begin(start_request(), now))
            with self._lock:
                self._chains[instance_id] = chain
                while len(self._chains) > self._capacity:
                    self._chains.popitem(last=False)
        return Replay(chain)

    def forget(self, instance_id: str) -> None:
        """Drop an instance's chain (it ended or continued as new)."""
        with self._lock:
            self._chains.pop(instance_id, None)


def fingerprint(kind: str, key: Any, now: datetime) -> Fingerprint:
    """What identifies a finished task in its orchestration's history."""
    return (kind, repr(key), now)
