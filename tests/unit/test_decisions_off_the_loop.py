# intent_ref: platform.access-control
"""A decision reads policies and writes its audit record through pooled connections: never on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from shared.policy import decisions

# Anything at all: the refusal comes before any argument is read.
CALLS: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
    (decisions.decide, (object(), "work.lease", object())),
    (decisions.record_decision, (object(), "work.lease", object(), object())),
]


@pytest.mark.parametrize(("call", "args"), CALLS, ids=["decide", "record_decision"])
def test_a_decision_on_the_event_loop_is_refused_before_any_io(call: Callable[..., Any], args: tuple[Any, ...]) -> None:
    # Four async routes once decided on the loop: with the pool busy, each stalled every request the loop served.
    async def on_the_loop() -> None:
        with pytest.raises(RuntimeError, match="off the event loop"):
            call(*args)

    asyncio.run(on_the_loop())
