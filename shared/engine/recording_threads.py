# intent_ref: platform.execution
"""The threads the orchestrator's recording activities run their transactions on, in each process.

An activity that takes the Durable client binding is a coroutine (the binding wraps it so), and its transactions
block: they run here rather than on the event loop's default executor, which has a few threads (cores + 4) shared
with everything else on the loop, while a dispatch may hold its thread as long as it waits for quick results
(ADR 0034). As many as the host gives synchronous functions, so that the binding costs no concurrency.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

RECORDING_THREADS = 16
"""Recording transactions running at once in this process (each holds a pooled connection while it runs)."""

T = TypeVar("T")

_threads: ThreadPoolExecutor | None = None
_threads_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _threads
    with _threads_lock:
        if _threads is None:
            _threads = ThreadPoolExecutor(max_workers=RECORDING_THREADS, thread_name_prefix="recording")
        return _threads


async def on_recording_thread(function: Callable[[], T]) -> T:
    """Run `function` on a recording thread, in the current context (the activity's span, its tenant)."""
    return await asyncio.wrap_future(_pool().submit(contextvars.copy_context().run, function))
