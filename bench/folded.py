# intent_ref: platform.gateway
"""Summarize a sampling profiler's folded stacks: share of busy samples per function, inclusive and self."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# Frames where a thread waits (on the network, the database, a lock or the thread pool's queue), not computes.
WAITING = (
    "EpollSelector.select",
    "Connection.wait",
    "_communicate_gen",
    "Condition.wait",
    "Queue.get",
    "Event.wait",
    "wait_c",
)
_FRAME = re.compile(r"^(?P<name>\S+) \((?P<file>[^:]+):\d+\)$")


def _label(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['name']} ({match['file'].rsplit('/', 1)[-1]})"


def summarize(path: Path, top: int = 25) -> dict[str, object]:
    """Busy and waiting sample counts, and the functions holding the most busy samples."""
    busy = waiting = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_label(frame) for frame in stack.split(";")]
        samples = int(count)
        if any(marker in frames[-1] for marker in WAITING):
            waiting += samples
            continue
        busy += samples
        own[frames[-1]] += samples
        for label in set(frames):
            inclusive[label] += samples
    share = {
        "busy_samples": busy,
        "waiting_samples": waiting,
        "inclusive": [(name, round(100 * n / max(busy, 1), 1)) for name, n in inclusive.most_common(top * 3)],
        "self": [(name, round(100 * n / max(busy, 1), 1)) for name, n in own.most_common(top)],
    }
    return share
