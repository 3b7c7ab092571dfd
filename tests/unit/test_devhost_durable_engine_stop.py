# intent_ref: platform.devhost-durable
"""The devhost's Durable dispatcher stops when told to, even when a wake-up arrives in the same instant."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from devhost.durable.engine import Engine


class _IdleEngine(Engine):
    """The dispatcher loop alone: a pass finds nothing and asks to sleep for the safety poll."""

    async def _dispatch(self) -> float:
        return 2.0


def test_a_stop_that_meets_a_wake_up_still_ends_the_dispatcher() -> None:
    async def main() -> None:
        engine = _IdleEngine(cast(Any, None), cast(Any, None), cast(Any, None))
        await engine.start()
        await asyncio.sleep(0.01)  # the loop now waits for a wake-up
        engine.wake()
        await asyncio.sleep(0)  # that wait is over; the loop has not resumed yet when the stop's cancel lands
        await asyncio.wait_for(engine.stop(), 5)

    asyncio.run(main())
