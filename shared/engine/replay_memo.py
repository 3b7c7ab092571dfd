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

The memo is bounded by count and by an estimated size (ADR 0025): a waiting execution stays resident for as long as
it waits (approvals, waits of up to 30 days), and the memo is shared by every tenant, so a count alone let large
inputs hold a gigabyte per worker. A chain's size is estimated once per input or event, when it is first reduced
(never again on a replay that reuses it); a chain over the per-chain ceiling is not remembered at all, and the least
recently run chains are forgotten first while the total is over the budget. Nothing depends on the memo: a chain it
does not hold is recomputed by the replay, which gives the same reductions, only slower.
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

BUDGET_BYTES = 256 * 1024 * 1024
"""The estimated size of all chains remembered per process (least recently run forgotten first)."""

CHAIN_CEILING_BYTES = 8 * 1024 * 1024
"""The estimated size above which a chain is not remembered: its every episode replays from the start."""

CHAIN_OVERHEAD = 16 * 1024
"""What a chain's start costs beyond its input: the state, its spec and the first commands (measured ~13 KB)."""

STEP_OVERHEAD = 4 * 1024
"""What one remembered reduction costs beyond its event's payload: a new state's copied maps (measured ~3 KB)."""


def estimate(value: Any, limit: int) -> int:
    """Roughly the bytes `value` (parsed JSON) holds in memory, counted up to just past `limit` and no further, so a
    huge value costs no more to estimate than one at the limit. Strings count their length (they dominate large
    payloads); containers and scalars count what CPython's objects cost, since many small values outweigh their
    JSON text several times over."""
    total, pending = 0, [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, str | bytes):
            total += 50 + len(item)
        elif isinstance(item, dict):
            total += 100 + 40 * len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            total += 56 + 8 * len(item)
            pending.extend(item)
        else:
            total += 32
    return total


def _event_payload(event: machine.Event) -> Any:
    """The part of an event that a state keeps and that can be large."""
    if isinstance(event, machine.ActivityDone | machine.ChildEnded):
        return event.result
    if isinstance(event, machine.EventRaised):
        return event.data
    if isinstance(event, machine.ActivityFailed):
        return event.error
    return None


@dataclass(eq=False)
class _Chain:
    started_at: datetime
    start: Reduction
    size: int
    steps: list[tuple[Fingerprint, Reduction, int]] = field(default_factory=list)


class Replay:
    """One episode's walk along its instance's chain."""

    def __init__(self, memo: ReplayMemo, instance_id: str, chain: _Chain) -> None:
        self._memo = memo
        self._instance_id = instance_id
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
        happened = event()
        reduction = machine.reduce(state, happened)
        # Estimated once, here, where the event is first reduced; a replay that reuses it does not pay again.
        size = STEP_OVERHEAD + estimate(_event_payload(happened), self._memo.chain_ceiling)
        dropped = sum(step[2] for step in steps[position:])
        del steps[position:]  # what followed a different event is not this history's
        steps.append((fingerprint, reduction, size))
        self._memo._resized(self._instance_id, self._chain, size - dropped)
        return reduction


class ReplayMemo:
    """Chains of reductions per orchestration instance, bounded by count and estimated size, shared by the episodes
    of one process."""

    def __init__(
        self,
        capacity: int = CAPACITY,
        budget_bytes: int = BUDGET_BYTES,
        chain_ceiling_bytes: int = CHAIN_CEILING_BYTES,
    ) -> None:
        self._capacity = capacity
        self._budget = budget_bytes
        self.chain_ceiling = min(chain_ceiling_bytes, budget_bytes)
        self._chains: OrderedDict[str, _Chain] = OrderedDict()
        self._size = 0  # the sum of the remembered chains' sizes
        self._lock = threading.Lock()  # episodes of different instances run on different threads

    @property
    def size(self) -> int:
        """The estimated bytes of the chains remembered now; never above the budget."""
        return self._size

    def __len__(self) -> int:
        return len(self._chains)

    def begin(self, instance_id: str, now: datetime, start_request: Callable[[], dict[str, Any]]) -> Replay:
        """The replay of `instance_id`'s generation that started at `now` (its first episode's orchestration time:
        a later generation or a restart starts later); `start_request` gives its input when not remembered."""
        with self._lock:
            chain = self._chains.get(instance_id)
            if chain is not None:
                self._chains.move_to_end(instance_id)
        if chain is None or chain.started_at != now:
            request = start_request()
            chain = _Chain(now, machine.begin(request, now), CHAIN_OVERHEAD + estimate(request, self.chain_ceiling))
            with self._lock:
                self._drop(instance_id)  # an older generation, or one another thread remembered meanwhile
                if chain.size <= self.chain_ceiling:
                    self._chains[instance_id] = chain
                    self._size += chain.size
                    self._evict()
        return Replay(self, instance_id, chain)

    def forget(self, instance_id: str) -> None:
        """Drop an instance's chain (it ended or continued as new)."""
        with self._lock:
            self._drop(instance_id)

    def _resized(self, instance_id: str, chain: _Chain, delta: int) -> None:
        """`chain` grew (or was cut) by `delta` bytes; a chain the memo no longer holds is not counted."""
        with self._lock:  # under the lock: an eviction on another thread subtracts the size it reads
            chain.size += delta
            if self._chains.get(instance_id) is not chain:
                return
            self._size += delta
            if chain.size > self.chain_ceiling:
                self._drop(instance_id)
            self._evict()

    def _drop(self, instance_id: str) -> None:
        chain = self._chains.pop(instance_id, None)
        if chain is not None:
            self._size -= chain.size

    def _evict(self) -> None:
        """Forget the least recently run chains while over the count or the size budget."""
        while self._chains and (len(self._chains) > self._capacity or self._size > self._budget):
            _, chain = self._chains.popitem(last=False)
            self._size -= chain.size


def fingerprint(kind: str, key: Any, now: datetime) -> Fingerprint:
    """What identifies a finished task in its orchestration's history."""
    return (kind, repr(key), now)
