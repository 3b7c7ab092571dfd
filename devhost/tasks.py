# intent_ref: platform.devhost
"""Background-task helpers shared by the host's components."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence


async def stop_tasks(tasks: Sequence[asyncio.Task[None]], grace_seconds: float) -> None:
    """Let `tasks` finish for `grace_seconds`, then cancel the rest and wait for them to end."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
