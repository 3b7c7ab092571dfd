# intent_ref: platform.execution
"""A dispatch's short wait for the results of the quick built-in attempts it started (ADR 0034).

Answered with the dispatch, a result costs the orchestration no episode of its own and the module worker no raised
event. The attempts were begun `awaited`; whatever is still running when the wait ends is released to its recorder,
which raises it as before. The row lock of each attempt decides who delivers, so a result is delivered once or,
after a crash, again by the same deliverer: never by nobody.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from uuid import UUID

from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine.event_wakeup import get_event_wakeup
from shared.engine.machine import Verdict
from shared.engine.steps import AttemptKey


def await_results(
    tenant_id: UUID,
    keys: Sequence[AttemptKey],
    wait_s: float,
    on_all: Callable[[store.Conn, dict[str, Verdict]], None] | None = None,
) -> dict[str, Verdict]:
    """The results of `keys` recorded within `wait_s`, by attempt event name; the rest are released. `on_all` runs
    in the transaction that takes the last of them, when every one is answered."""
    if not keys or wait_s <= 0:
        return {}
    wakeup = get_event_wakeup()
    # Without a listener there is nothing to wake the wait: release at once rather than sleep blind.
    deadline = time.monotonic() + (wait_s if wakeup is not None else 0.0)
    waiter = wakeup.subscribe_thread(keys[0].execution_id) if wakeup is not None else None
    answered: dict[str, Verdict] = {}
    open_keys = list(keys)
    try:
        while open_keys:
            left = deadline - time.monotonic()
            if waiter is not None and left > 0:
                # Every result's commit appends an execution event, whose notification wakes this.
                waiter.event.wait(left)
                waiter.event.clear()
            final = time.monotonic() >= deadline
            with tenant_transaction(tenant_id) as conn:
                answered.update(verdicts(store.take_results(conn, open_keys, final=final)))
                open_keys = [key for key in open_keys if key.event_name not in answered]
                if not open_keys and on_all is not None:
                    on_all(conn, answered)
            if final:
                break
    finally:
        if waiter is not None:
            waiter.close()
    return answered


def verdicts(attempts: Iterable[store.Attempt]) -> dict[str, Verdict]:
    """Taken results as a dispatch answers them: by attempt event name."""
    return {attempt.key.event_name: Verdict.model_validate(attempt.verdict()) for attempt in attempts}
