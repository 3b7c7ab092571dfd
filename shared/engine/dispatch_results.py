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
from typing import Any
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
                answered.update(verdicts(conn, store.take_results(conn, open_keys, final=final)))
                open_keys = [key for key in open_keys if key.event_name not in answered]
                if not open_keys and on_all is not None:
                    on_all(conn, answered)
            if final:
                break
    finally:
        if waiter is not None:
            waiter.close()
    return answered


def verdicts(conn: store.Conn, attempts: Iterable[store.Attempt]) -> dict[str, Verdict]:
    """Taken results as a dispatch answers them: by attempt event name."""
    return {attempt.key.event_name: Verdict.model_validate(raised_verdict(conn, attempt)) for attempt in attempts}


# Read after the attempt's result in the recorder's transaction: a cancel that held the attempt first (ADR 0014's
# order) has committed by then, and one that comes later waits for this transaction's hold of the attempt.
_CANCEL_RECORDED = "SELECT cancel_requested_at IS NOT NULL AS recorded FROM app.executions WHERE id = %s"


def raised_verdict(conn: store.Conn, attempt: store.Attempt) -> dict[str, Any]:
    """An attempt's verdict as its recorder hands it to the orchestration (raised, or answered by an activity): a run
    attempt's failure recorded while a cancel is recorded says so (`cancel_first`), so that the reducer applies it as
    a failure during that cancel even when it gets there before the cancel's event (rules 7, ADR 0014). A cancel
    recorded after a failure is only ever one that failure does not stop the run for (a retry was left, else the
    cancel is refused); a verdict read again after such a cancel is marked although its first reading was not, which
    changes only which of the two the reducer applies first: the run ends cancelled either way.

    An abandoned attempt (the cancel's end of its queued work) says so too: its verdict was raised after the cancel's
    own event, but one whose raise failed is raised again by the sweeper (ADR 0027), which may hand it over before a
    cancel whose own raise failed too; read first, without the mark, it failed the run that was being cancelled."""
    verdict = attempt.verdict()
    if not verdict["ok"] and attempt.key.phase == "run":
        row = conn.execute(_CANCEL_RECORDED, (attempt.key.execution_id,)).fetchone()
        if row is not None and row["recorded"]:
            verdict["cancel_first"] = True
    return verdict
