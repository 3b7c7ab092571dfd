# intent_ref: platform.execution
"""The module worker: runs built-in actions taken from `module-work` and hands each result to its orchestration.

Delivery is at least once, and a copy of an item can arrive while another still runs (a re-executed dispatch
publishes it again, in the same batch or on another instance). So each copy first claims its attempt in the
database (ADR 0026): one copy runs the module, the others wait for its result or for its lease to lapse. A holder
that has had no renewal confirmed for most of its lease gives its run up before the database lets another copy take
the claim over (LEASE_S), so that a live holder whose renewals stall does not run beside its successor; it then waits
as a copy does, and records the result its module had (or runs it, if it never started or failed for being told
it was abandoned, once more at most) once its claim is its own again, so that an outage longer than the batch's
retries does not leave the attempt to nobody. An attempt that has a result is not run again: its recorded verdict is
raised again. An attempt of an execution that has ended, or whose deadline (its timeout, counted from its dispatch)
has passed, is not started; one still running at its deadline is abandoned as timed out. The items of a batch run
concurrently on a bounded pool, and each verdict is raised as soon as it is recorded, so one slow item holds up no
other.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import psycopg
from azure.core.exceptions import AzureError
from azure.storage.blob import ContainerClient
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from shared import accepted_json
from shared.db.session import bounded_lock_waits, tenant_transaction
from shared.engine import steps as store
from shared.engine.dispatch_results import raised_verdict
from shared.engine.module_threads import LazyThreads, run_in_share, tenant_place
from shared.engine.payloads import claim_check, kept_reference
from shared.engine.protocol import EventRaiser, WorkItem, no_one_to_tell
from shared.engine.steps import Attempt, AttemptKey, Claim
from shared.engine.work_hub import Carried, hand_back_work
from shared.modules import BUILTIN_MODULES, Module, ModuleContext, StepFailed, run_module
from shared.modules.artifact_write import REMOVAL_WINDOW_S, bounded_by, within_deadline
from shared.modules.contract import Abandoned
from shared.observability.tracing import continued_span, execution_attributes
from shared.storage.blob import StorageCall
from shared.tenants.repository import tenant_settings

logger = logging.getLogger(__name__)

LEASE_S = 15.0
"""How long a claim holds for its holder without a renewal confirmed, counted from the sending of the last one
confirmed (or of the claim): once it has had none for LEASE_S less HOLD_MARGIN of it, the holder gives its run up
(the module is told it is abandoned, and no result is recorded while the claim is not its own again). The database
holds the claim longer, TAKEOVER_GRACE past it, so that a copy takes it over only after a live holder has given up
(ADR 0048, amended 2026-12-07)."""
HOLD_MARGIN = 0.1
"""The part of LEASE_S a holder keeps in hand: it gives up after LEASE_S * (1 - HOLD_MARGIN) (13.5 s) without a
renewal confirmed, so that an event loop that notices a moment late still gives up before the lease's end."""
TAKEOVER_GRACE = 1 / 3
"""How much longer than LEASE_S (a part of it: 5 s, a heartbeat) the database holds a claim from each renewal: the
time a module left behind by a holder that gave up has to see it is abandoned before a copy starts the attempt again.
A copy whose holder died takes the claim over LEASE_S * (1 + TAKEOVER_GRACE) (20 s) after its last renewal."""
HEARTBEAT_S = LEASE_S / 3
"""How often a running attempt renews its claim (and looks at its deadline when no result came)."""
RENEWAL_THREADS = 8
"""Renewals sent at once per process, on threads of their own (as the hand-backs are): on the event loop's default
executor, which the claims, the recorded results and every other async function of the process share, a renewal
waited behind them, the lease lapsed and a copy ran the attempt beside its live holder. A renewal takes a few
milliseconds, and waits for a lock or runs at most RENEWAL_BOUND of a heartbeat: one whose row another transaction
holds fails as unconfirmed (the next heartbeat asks again) instead of holding its thread, so that a few stuck ones do
not hold up every other holder's renewals, other tenants' too. One stuck on a connection that no longer answers holds
its thread; as many threads as module threads leave the others theirs."""
RENEWAL_BOUND = 0.5
"""The part of HEARTBEAT_S a renewal (or a release, or a holder's taking back of its claim) may wait for a lock, and
run, before the server cancels it (2.5 s): well inside the time its holder keeps its claim without one confirmed."""
HELD_POLL_S = 0.5
"""How often a copy that found its attempt claimed by another looks again."""
FRESH_CLAIM_S = 0.1
"""A run that gets its thread within this long of its claim starts without looking at the claim again; one that
waited longer for its thread (its tenant's share or the pool was full) renews the claim first (ADR 0026)."""
TENANT_LOOK_S = 2.0
"""The longest the look at its tenant after a large output's store (`kept_for_tenant`) waits for the tenant row and
runs, less when the attempt's deadline is nearer: an erasure holds that row (FOR UPDATE) while it deletes the
tenant's rows, and with only the 60 s statement timeout the look held the module thread, its tenant's share and a
pooled connection that long, past the deadline and for nobody. Past it the attempt fails, retryable; the blob,
written before the erasure's row delete commits, goes with the erasure's last pass (ADR 0026)."""
STORE_LATER = "store_later"
"""In a run's result: the output (`_Succeeded`) of a module that succeeded and whose store the database stopped with
an error that may clear (`_transient`: the look at its tenant met it out of reach, with or without a give-up, or a
store's renewal did): once the claim is confirmed again (a renewal sent since, or taken back), only the store runs
again (only the look when its blob was written), never the module, whose work is done; until the attempt's
deadline at most. Lost if the host stops meanwhile: the redelivery runs the module again (at least once)."""

_HOST = socket.gethostname()[:100]

T = TypeVar("T")


def _on_threads(threads: LazyThreads, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`function(*args)` on `threads`, in the current context, as asyncio.to_thread runs it on the loop's default
    executor; for the calls that must not wait behind whatever else the process runs there."""
    call = functools.partial(contextvars.copy_context().run, function, *args)
    return asyncio.get_running_loop().run_in_executor(threads(), call)


def _held_for_s() -> float:
    """How long after the sending of its last renewal confirmed a holder still counts its claim as its own."""
    return LEASE_S * (1 - HOLD_MARGIN)


def _database_lease_s() -> float:
    """How long the database holds a claim from its taking or renewal: only once that has passed does another copy
    take it over (its own clock on both sides: `claimed_until` against `clock_timestamp()`)."""
    return LEASE_S * (1 + TAKEOVER_GRACE)


@dataclass(frozen=True)
class Outcome:
    """A verdict to raise: to which orchestration, under which event name."""

    execution_id: str
    event_name: str
    verdict: dict[str, Any]


MAX_ITEM_DEPTH = 4 * accepted_json.MAX_DEPTH
"""The deepest body parsed as a work item. Not accepted_json's own bound: a parameter can take a whole input or
output (each up to that bound) inside the definition's own nesting, so an item can nest about twice as deep (the
dispatch serializes it with pydantic, which stops at about 255 levels). A body nested far deeper is no work item:
a thousand levels made json.loads raise RecursionError, which failed the whole batch on every retry."""


def parse_items(bodies: Iterable[bytes | str]) -> list[WorkItem]:
    """The work items of a batch; a body that is not one is logged and skipped (it can never become valid)."""
    items: list[WorkItem] = []
    for body in bodies:
        try:
            items.append(WorkItem.model_validate(_document(body)))
        except (ValueError, ValidationError) as exc:
            logger.error("module-work: skipped an event that is not a work item: %s", str(exc)[:500])
    return items


def _document(body: bytes | str) -> Any:
    """The JSON value of a body; ValueError when it is not JSON, or nests deeper than MAX_ITEM_DEPTH."""
    text = body.decode() if isinstance(body, bytes) else body
    # Counted without parsing (accepted_json's bracket count), so that the parser never meets the recursion limit.
    depth = accepted_json.nesting_depth(text)
    if depth > MAX_ITEM_DEPTH:
        raise ValueError(f"the body nests {depth} levels deep, more than {MAX_ITEM_DEPTH}")
    return json.loads(text)


MAX_ATTEMPT_RUN_S = 50 * 60
"""The longest one attempt of a built-in module runs here, whatever its step allows: a batch lasts as long as its
slowest item, and past the host's `functionTimeout` (1 h, host.json) the host restarts the worker process and every
invocation in it, other tenants' included. Longer work belongs to a remote module (ADR 0027)."""


def attempt_timeout(item: WorkItem, modules: Mapping[str, Module[Any]] = BUILTIN_MODULES) -> float:
    """The attempt's timeout: the step's (carried by the item), else its module's, as the orchestrator's timer; at
    most MAX_ATTEMPT_RUN_S."""
    if item.timeout_s is not None:
        return float(min(item.timeout_s, MAX_ATTEMPT_RUN_S))
    module = modules.get(item.action)
    return float(min(module.timeout_s if module is not None else Module.timeout_s, MAX_ATTEMPT_RUN_S))


def claim_owner() -> str:
    """Names one copy's claim: unique per run, so two copies in one process are told apart too."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def run_item(item: WorkItem, modules: Mapping[str, Module[Any]] = BUILTIN_MODULES) -> Outcome | None:
    """`run_attempt` for callers without an event loop."""
    return asyncio.run(run_attempt(item, modules))


async def run_attempt(
    item: WorkItem, modules: Mapping[str, Module[Any]] = BUILTIN_MODULES, entry: _Entry | None = None
) -> Outcome | None:
    """Claim one built-in attempt and run it (or find its recorded result); None when there is nothing to raise.
    `entry`, the item's in a batch, is marked waiting while it waits for another copy's result."""
    key = AttemptKey(item.execution_id, item.step_id, item.phase, item.attempt)
    owner = claim_owner()
    timeout_s = attempt_timeout(item, modules)
    # When the claim was asked for: the statement that takes it runs after, so the lease it writes ends later.
    asked = time.monotonic()
    claim, settings = await asyncio.to_thread(_claim, item, key, owner, timeout_s)
    while claim.outcome == "held":
        if entry is not None and entry.gone_on:
            return None  # its copy on the hub answers for it: no need to wait here as long as the holder runs
        # Another copy runs it: its result, or its lease lapsing (the holder died), ends the wait.
        if entry is not None:
            entry.waiting = True
        await asyncio.sleep(max(0.0, min(HELD_POLL_S, claim.remaining_s)))
        if entry is not None:
            entry.waiting = False
        asked = time.monotonic()
        claim, settings = await asyncio.to_thread(_claim, item, key, owner, timeout_s)
    if claim.outcome == "missing":
        # Its dispatch commits before it publishes, so the attempt is gone (the tenant was erased): nothing to do.
        logger.warning("module-work: no attempt %s; skipped", key)
        return None
    if claim.outcome == "ended":
        # Nobody waits for the result any more, and the work must not happen after its execution's end.
        logger.info("module-work: the execution of %s has ended; not run", key)
        return None
    assert claim.attempt is not None  # every outcome but missing carries the attempt
    if claim.outcome == "finished":
        return await asyncio.to_thread(_to_raise, item, key, claim.attempt)
    if claim.outcome == "late":
        if claim.holder is not None:
            # A copy took it before the deadline: that copy abandons it (or the orchestrator's timer ends it).
            return None
        result = _timed_out(key, timeout_s, "not started before its deadline")
    else:
        if claim.holder is not None:
            logger.warning("module-work: %s taken over from %s, whose claim lapsed", key, claim.holder)
        ran = await _run_claimed(item, key, owner, claim, asked, settings, modules, timeout_s, entry)
        if ran is None:
            # Whoever recorded a result meanwhile (the orchestrator's timeout or cancel, a copy that took over)
            # delivers it: this copy has nothing to add.
            return None
        result = ran
    return await asyncio.to_thread(_record, item, key, result)


def _claim(item: WorkItem, key: AttemptKey, owner: str, timeout_s: float) -> tuple[Claim, dict[str, Any]]:
    # Its own short transaction: the claim must be visible to every other copy while the module runs.
    with tenant_transaction(item.tenant_id) as conn:
        claim = store.claim_attempt(conn, key, owner=owner, lease_s=_database_lease_s(), timeout_s=timeout_s)
        settings: dict[str, Any] = {}
        if claim.outcome == "claimed":
            settings = claim.settings if claim.settings is not None else dict(tenant_settings(conn))
    return claim, settings


@contextlib.contextmanager
def _claim_transaction(item: WorkItem) -> Iterator[Any]:
    """A short transaction of the item's tenant for a claim's renewal, release or taking back: its lock waits and
    its statements bounded by RENEWAL_BOUND of a heartbeat (LockNotAvailable, QueryCanceled past it), so that a row
    another transaction holds fails it at once rather than after the 60 s statement timeout."""
    bound_ms = max(1, int(HEARTBEAT_S * RENEWAL_BOUND * 1000))
    with bounded_lock_waits(bound_ms), tenant_transaction(item.tenant_id) as conn:
        conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)", (f"{bound_ms}ms",))
        yield conn


def _still_held(item: WorkItem, key: AttemptKey, owner: str) -> bool:
    """Renew the claim, in a short transaction of its own: whether it still holds. A database error propagates."""
    with _claim_transaction(item) as conn:
        return store.renew_claim(conn, key, owner=owner, lease_s=_database_lease_s())


_renewal_threads = LazyThreads(RENEWAL_THREADS, "module-work-renewal")


def _release(item: WorkItem, key: AttemptKey, owner: str) -> None:
    try:
        with _claim_transaction(item) as conn:
            store.release_claim(conn, key, owner=owner)
    except Exception as exc:  # the lease lapses on its own
        logger.warning("module-work: could not release the claim on %s: %s", key, exc)


def _take_back(item: WorkItem, key: AttemptKey, owner: str, timeout_s: float) -> Literal["own", "held", "gone"]:
    """For a holder that gave its run up: its claim renewed if still its own, else taken again if it has lapsed
    ("own"); "held" while another copy holds it; "gone" once the attempt is not to be run here (it has a result, its
    execution ended, its deadline passed). A database error propagates."""
    with _claim_transaction(item) as conn:
        if store.renew_claim(conn, key, owner=owner, lease_s=_database_lease_s()):
            return "own"
        claim = store.claim_attempt(conn, key, owner=owner, lease_s=_database_lease_s(), timeout_s=timeout_s)
    if claim.outcome == "claimed":
        return "own"
    return "held" if claim.outcome == "held" else "gone"


DEADLINE_SLACK_S = 0.1
"""A module's failure this close to its attempt's deadline, or past it, was cut off by the deadline (a call bounded
by it ends a moment either side of it): recorded as the attempt's timeout."""


def _timed_out(key: AttemptKey, timeout_s: float, why: str) -> dict[str, Any]:
    # Worded as the orchestrator's own timeout: whichever of the two is recorded first, the step reads the same.
    subject = f"step {key.step_id}" if key.phase == "run" else f"compensation of {key.step_id}"
    error = f"{subject} timed out after {timeout_s:g} s ({why})"
    return {"ok": False, "error": error, "retryable": True, "state": "timed_out"}


async def _run_claimed(
    item: WorkItem,
    key: AttemptKey,
    owner: str,
    claim: Claim,
    asked: float,
    settings: dict[str, Any],
    modules: Mapping[str, Module[Any]],
    timeout_s: float,
    entry: _Entry | None = None,
) -> dict[str, Any] | None:
    """Run the module on the bounded pool until its result or its deadline, renewing the claim meanwhile; `entry`,
    the item's in a batch, may give the run up while it still waits for a thread (its batch's hold ended).

    None when the claim was lost (the attempt got a result elsewhere, say the orchestrator's timeout, or the claim
    taken over), or given up (no renewal confirmed within `_held_for_s` of the sending, at `asked` on the monotonic
    clock, of the last one confirmed or of the claim) and not taken back by its deadline, or held by another copy
    meanwhile (`_taken_back`): what is recorded then stands. Taken back, its module's result is answered (a module
    left running is waited for under the claim, never started again), unless it is a failure its module raised for
    being told it was abandoned (`Abandoned`); that run runs once more (once only: what the next returns is recorded),
    and a run given up before it started starts. A module that succeeded but whose output's store the database
    stopped with an error that may clear (STORE_LATER), under a give-up or not, is not run again here: only its store
    is (only its look, its blob written), with the output kept from its run, each time a renewal sent since it failed
    is confirmed (or the claim is taken back), by the deadline.

    Why the give-up comes first, whatever the clocks: each confirmed statement ran after it was sent, and wrote
    `claimed_until` as its database time plus `_database_lease_s`; a copy takes the claim over only once the
    database's own clock has passed that. So this holder, counting `_held_for_s` on its own clock from the sending,
    gives up at least LEASE_S * (HOLD_MARGIN + TAKEOVER_GRACE) before any copy may start, however far apart the two
    machines' clocks are. A renewal that ran but was not confirmed (its answer lost or late) only moves the takeover
    later.
    """
    deadline = time.monotonic() + claim.remaining_s
    start = _Start()
    # Set once nobody waits for this attempt here any more (its result, a cancel, a take-over, the host stopping),
    # not at a give-up: a successful output's store stops then, and not before.
    ended = threading.Event()
    ctx = ModuleContext(
        tenant_id=item.tenant_id,
        execution_id=str(item.execution_id),
        step_id=item.step_id,
        attempt=item.attempt,
        tenant_settings=settings,
        phase=item.phase,
        # A module that polls or waits ends by then: past it, the thread it would hold is no longer waited for.
        deadline=deadline,
    )

    def queued(
        start: _Start, ctx: ModuleContext, done: _Succeeded | None = None
    ) -> asyncio.Future[dict[str, Any] | _NotStarted]:
        # In the current context, so that what the module does (an HTTP call, say) shows in the execution's trace;
        # in the tenant's share of the threads, so that its slow modules cannot hold up other tenants' items.
        fresh_until = time.monotonic() + FRESH_CLAIM_S
        run = asyncio.ensure_future(
            run_in_share(
                item.tenant_id,
                functools.partial(
                    _run_module, item, key, owner, ctx, modules, deadline, fresh_until, start, ended, done
                ),
            )
        )
        if entry is not None:
            entry.start = start
        return run

    run = queued(start, ctx)
    confirmed = renewal_sent = asked
    renewal: asyncio.Future[bool] | None = None
    # Whether this copy gave its run up and has taken its claim back since: a run that never started then starts
    # (nobody else runs the attempt); one that has ended has its result recorded.
    taken_back = False
    # A run stopped short by a give-up runs again once at most: a database that keeps dropping out gives up each run
    # in turn, and the attempt's retries, not this loop, answer for that.
    rerun_left = True
    # Since when (monotonic) the output of a run whose store the database stopped has waited for its store to run
    # again (STORE_LATER): a renewal sent since then and confirmed lets it.
    kept_since: float | None = None
    # The output of this attempt's module once it has succeeded: any later run stores it, never runs the module.
    succeeded: _Succeeded | None = None
    kept_error = ""  # why the store of the output kept did not succeed, last time
    try:
        while True:
            now = time.monotonic()
            held: bool | None = None
            if renewal is not None and renewal.done():
                held = _renewed(renewal, key)
                renewal = None
                if held:
                    confirmed = renewal_sent
            # A result already there is recorded, whatever the renewals: it was computed under the claim.
            kept = False
            if run.done():
                result = None if run.cancelled() else run.result()
                stopped_short = (
                    isinstance(result, dict) and _stopped_short(result) and now < deadline - DEADLINE_SLACK_S
                )
                if stopped_short and isinstance(result, dict) and result.get(STORE_LATER) is not None:
                    # A module that succeeded and whose output's store alone the database stopped: its work is done,
                    # and only that store runs again (running the module again repeated its side effects), once the
                    # claim is known to be this copy's: a renewal sent after the store failed confirmed, or the claim
                    # taken back after a give-up. Until then the claim is renewed (or given up) as while it ran; by
                    # the deadline at most, past which it is recorded as timed out (below).
                    kept, succeeded, kept_error = True, result[STORE_LATER], str(result["error"])
                    if kept_since is None:
                        kept_since = now
                    if taken_back or confirmed >= kept_since:
                        taken_back = False
                        kept_since = None
                        start, ctx = _Start(), dataclasses.replace(ctx, abandoned=threading.Event())
                        run = queued(start, ctx, succeeded)
                        continue
                elif taken_back and (
                    result is None or result is _NotStarted.GIVEN_UP or (stopped_short and rerun_left)
                ):
                    # Given up before it started, or a failure its module returned for being told it was abandoned
                    # (an HTTP wait, an event's send, stopped short by the give-up, not by what it did), and the claim
                    # is this copy's again: it runs now, once more, its module having returned. A store given up
                    # before it started runs as such: the module it follows succeeded (`succeeded`).
                    rerun_left = rerun_left and not stopped_short
                    taken_back = False
                    start, ctx = _Start(), dataclasses.replace(ctx, abandoned=threading.Event())
                    run = queued(start, ctx, succeeded)
                    continue
            if run.done() and not kept:
                assert result is not None  # only a give-up cancels a run, and it is followed by a taking back
                if result is _NotStarted.CLAIM_LOST:
                    logger.warning("module-work: the claim on %s was lost while it waited for a thread; not run", key)
                    return None
                if result is _NotStarted.LATE:
                    # The thread took it from the queue just as its deadline passed, and did not start it.
                    return _timed_out(key, timeout_s, "no thread was free")
                if result is _NotStarted.GIVEN_UP:
                    return None  # given up here (its batch's hold ended): its copy handed back answers for it
                if not result["ok"] and "state" not in result and time.monotonic() >= deadline - DEADLINE_SLACK_S:
                    # Cut off by its deadline (an HTTP call bounded by it, say): a timeout, as the orchestrator's own
                    # would record it. Recorded as the module's failure, the step read `failed` where it had timed out
                    # (since rules 10 the orchestrator's timer counts from the start's record, after this deadline).
                    return _timed_out(key, timeout_s, str(result["error"]))
                return result
            if now >= confirmed + _held_for_s():
                # The database slow or out of reach, or this process too busy to hear back: another copy may take the
                # claim over once its lease and grace have passed, so this one gives its run up first. A run queued
                # for a thread never starts; one running is told it is abandoned (and keeps its result, if it ends).
                if start.give_up():
                    run.cancel()
                ctx.abandoned.set()
                if renewal is not None:
                    renewal.cancel()
                    renewal = None
                logger.warning(
                    "module-work: no renewal of the claim on %s confirmed for %.1f s; given up until it is taken back",
                    key,
                    now - confirmed,
                )
                # Then it waits as a copy does: nobody else may be left to run the attempt (a batch whose retries
                # ran out during an outage). Once its claim is its own again, its result (if its module ended) is
                # recorded, or a run that never started starts; never while another copy holds the claim.
                back = await _taken_back(item, key, owner, run, deadline, timeout_s)
                if back is None:
                    logger.warning("module-work: %s was not taken back after its give-up; nothing recorded", key)
                    run.add_done_callback(_unheard)  # left behind (or ended): what it ends with is nobody's to hear
                    return None
                logger.info("module-work: the claim on %s was taken back after its give-up", key)
                confirmed = renewal_sent = back
                taken_back = True
                continue
            if held is False:
                # Ended (a cancel, the orchestrator's timeout) or taken over: a run still waiting for a thread must
                # not start after that, so it leaves the queue; one already running is left behind.
                run.cancel()
                logger.warning("module-work: the claim on %s was lost while it ran; its recorded result stands", key)
                return None
            if now >= deadline:
                # A run still queued for a thread never starts; a thread cannot be stopped, only left behind.
                run.cancel()
                if kept:
                    why = f"its output kept, its store not done by then: {kept_error}"
                elif start.started:
                    why = "abandoned at its deadline while still running"
                else:
                    why = "no thread was free"
                logger.warning("module-work: %s reached its deadline: %s", key, why)
                return _timed_out(key, timeout_s, why)
            if renewal is None and now >= renewal_sent + HEARTBEAT_S:
                # On threads of its own, one renewal at a time: one not answered yet is waited for, not doubled.
                renewal_sent = now
                renewal = _on_threads(_renewal_threads, _still_held, item, key, owner)
            wake = min(deadline, confirmed + _held_for_s())
            if renewal is None:
                wake = min(wake, renewal_sent + HEARTBEAT_S)
            # A run that has ended (its output kept for a store later) is not waited for again: it is done.
            waited: set[asyncio.Future[Any]] = set() if run.done() else {run}
            if renewal is not None:
                waited.add(renewal)
            if waited:
                await asyncio.wait(waited, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(max(0.0, wake - now))
    except asyncio.CancelledError:
        # Its batch's hold ended while it waited for a thread (its copy handed back runs it), or the host is stopping
        # (a redelivery takes the attempt over): a run still queued here must not start as well. One that never
        # started lets its claim go at once, so that the copy need not wait it out; so does one that has ended (an
        # output kept for its store, say, lost with this host: its redelivery runs the module again, at least once
        # as ever), where nothing runs under the claim any more. Looked at before the cancel, which ends a run
        # still on its thread here without stopping it.
        ended_here = run.done()
        run.cancel()
        if start.give_up() or ended_here:
            await _on_threads(_renewal_threads, _release, item, key, owner)
        raise
    except Exception:
        run.cancel()  # before the release: a queued run must not start on a claim this copy gives up
        await asyncio.to_thread(_release, item, key, owner)
        raise
    finally:
        if entry is not None:
            entry.start = None
        # However it ended, a run not started yet never starts, even one a thread has just taken from the queue.
        start.give_up()
        if renewal is not None:
            renewal.cancel()  # its answer no longer matters; one not sent yet is not sent
        # However the wait ended, nobody waits for this run any more: a module that polls or waits stops now
        # instead of holding its thread and its tenant's share (one that has returned does not look), and so does
        # the store of a successful output.
        ended.set()
        ctx.abandoned.set()


def _stopped_short(result: dict[str, Any]) -> bool:
    """Whether a run's result is only the give-up's doing: a failure its module raised as `Abandoned` once told its
    attempt was abandoned (modules that look stop then, and fail), or the store of a successful output that the
    database stopped (it carries the output, STORE_LATER). Not the attempt's result: recorded, it
    failed a step the module had never run to its own end, or whose work was done. A success stands, its work done,
    whenever it came (only its store is tried again), and so does a failure of the module's own (a refusal, a 409),
    whatever the give-up did meanwhile."""
    return not result["ok"] and bool(result.get("stopped")) and bool(result.get("retryable", True))


def _renewed(renewal: asyncio.Future[bool], key: AttemptKey) -> bool | None:
    """A renewal's answer: whether the claim still holds; None when the database could not answer (the claim is
    then unconfirmed: the next heartbeat asks again, and the run is given up if none is confirmed in time)."""
    try:
        return renewal.result()
    except Exception as exc:
        logger.warning("module-work: could not renew the claim on %s: %s", key, exc)
        return None


async def _taken_back(
    item: WorkItem,
    key: AttemptKey,
    owner: str,
    run: asyncio.Future[Any],
    deadline: float,
    timeout_s: float,
) -> float | None:
    """After a give-up: poll the claim, backing off from HELD_POLL_S to HEARTBEAT_S, until it is this copy's again
    (renewed while still its own, or taken again once lapsed) and its run has ended, or its deadline has passed.
    Answers when (monotonic) the confirming statement was sent, or None when the attempt is no longer to be run here
    (it has a result, its execution ended, another copy holds it, or its deadline passed without the claim back).

    While a module left behind still runs, the claim taken back is renewed at each poll, so that no copy starts the
    attempt beside it; it is recorded once it ends. A claim another copy holds ends the wait, as it ends a copy's
    whose batch has handed it back: the holder answers for the attempt, and this one holds its tenant's place no
    longer. Each look is waited for at most a heartbeat (and never past the deadline), and no other is sent while it
    is unanswered: one on a connection that no longer answers must not keep the holder past its deadline."""
    pause = HELD_POLL_S
    asking: asyncio.Future[Literal["own", "held", "gone"]] | None = None
    sent = time.monotonic()
    try:
        while True:
            if asking is None:
                sent = time.monotonic()
                asking = _on_threads(_renewal_threads, _take_back, item, key, owner, timeout_s)
            await asyncio.wait({asking}, timeout=max(0.0, min(HEARTBEAT_S, deadline - time.monotonic())))
            state: str | None = None
            if asking.done():
                try:
                    state = asking.result()
                except Exception as exc:  # still out of reach: asked again after the pause
                    logger.info("module-work: the claim on %s given up could not be looked at: %s", key, exc)
                asking = None
            now = time.monotonic()
            if state in ("gone", "held"):
                return None  # nothing to run here: its result is there, or coming from the copy that holds it
            if state == "own" and (run.done() or now >= deadline):
                return sent
            if now >= deadline:
                # Not this copy's at its deadline: the orchestrator's timer ends it. A look still unanswered is left
                # behind (below); its answer, if it ever comes, changes nothing here.
                return None
            if asking is not None:
                continue  # unanswered within its heartbeat: waited for again, never doubled
            wait = max(0.0, min(pause, deadline - now))
            if state == "own" and not run.done():
                await asyncio.wait({run}, timeout=wait)
            else:
                await asyncio.sleep(wait)
            pause = min(pause * 2, HEARTBEAT_S)
    finally:
        # However the wait ended (its deadline, or cancelled with its batch or the host), a look still unanswered is
        # left behind, its answer read when it comes.
        if asking is not None:
            asking.add_done_callback(_unheard)


def _unheard(answer: asyncio.Future[Any]) -> None:
    """Reads a left-behind look's answer (or error), so that it is not reported as never retrieved."""
    if not answer.cancelled():
        answer.exception()


class _NotStarted(enum.Enum):
    """Why a run taken from the queue did not start its module; the copy that queued it answers for the attempt."""

    LATE = "its deadline passed while it waited for a thread"
    CLAIM_LOST = "its claim was lost while it waited for a thread"
    GIVEN_UP = "the copy that queued it gave it up first"


class _Start:
    """Whether a queued run starts its module: decided once, under a lock, by whichever comes first, the module
    thread that takes the run or the copy that queued it giving it up (its claim lost or given up, its batch's hold
    ended). Cancelling the run alone did not stop a thread that had just taken it from the queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: Literal["queued", "started", "given up"] = "queued"

    @property
    def started(self) -> bool:
        return self._state == "started"

    @property
    def given_up(self) -> bool:
        return self._state == "given up"

    def begin(self) -> bool:
        """On the module thread: whether the module may start (nobody gave the run up first)."""
        with self._lock:
            if self._state == "queued":
                self._state = "started"
            return self._state == "started"

    def give_up(self) -> bool:
        """Whether the module never starts: True unless it has started already."""
        with self._lock:
            if self._state == "queued":
                self._state = "given up"
            return self._state == "given up"


def _run_module(
    item: WorkItem,
    key: AttemptKey,
    owner: str,
    ctx: ModuleContext,
    modules: Mapping[str, Module[Any]],
    deadline: float,
    fresh_until: float,
    start: _Start,
    ended: threading.Event,
    done: _Succeeded | None = None,
) -> dict[str, Any] | _NotStarted:
    """The module's result (on a module thread), or why it was not started; `fresh_until` (monotonic): until when
    the claim taken just before counts as confirmed; `ended`: set once nobody waits for the run (its output's store
    then stops; required: an event nobody sets held the store a retry window per storage call); `done`: the output
    of a module that already succeeded in this attempt, whose store alone is run (the module is not run again)."""
    now = time.monotonic()
    if now >= deadline:
        return _NotStarted.LATE  # the caller has answered for it already
    # A run that waited for its thread may have outlived its claim: a cancel ends the attempt at any time, and the
    # heartbeat that would notice comes only every HEARTBEAT_S. One short renewal, only after such a wait, keeps the
    # work from starting after its execution's end. A run that got its thread at once is not asked again: its claim
    # has just been confirmed, and a cancel landing in that moment is no different from one a moment after the
    # start, which leaves the module running too. A renewal the database could not answer fails the run before
    # its start (the batch is retried): the claim may have lapsed to another copy meanwhile, and taking it as held
    # would run the module twice at once.
    if start.given_up:  # not worth a renewal, which would hold again a claim its copy has let go
        return _NotStarted.GIVEN_UP
    try:
        if now >= fresh_until and not _still_held(item, key, owner):
            return _NotStarted.CLAIM_LOST
    except psycopg.Error as exc:
        if done is None or not _transient(exc):
            raise
        # The store of an output kept from this attempt's run: the module's work is done, and letting the error
        # out failed the batch, whose redelivery ran the module again. Kept, its store is tried again later.
        return _kept(f"the storing of {item.action}'s output waited: its claim could not be renewed: {exc}", done)
    if not start.begin():
        return _NotStarted.GIVEN_UP
    try:
        # A module that succeeded in this attempt already (its store stopped short by the database) is not run again.
        if done is not None:
            return _stored(item, key, ctx, done, deadline, ended)
        output = run_module(item.action, ctx, item.params, modules)
        return _stored(item, key, ctx, _Succeeded(output), deadline, ended)
    except StepFailed as exc:
        result: dict[str, Any] = {"ok": False, "error": exc.message, "retryable": exc.retryable}
        if isinstance(exc, Abandoned) and ctx.abandoned.is_set():
            # Stopped short for being told its attempt was abandoned, not by what its work met (`_stopped_short`).
            result["stopped"] = True
        return result


@dataclass(frozen=True)
class _Succeeded:
    """The output of a module that succeeded, still to be stored (STORE_LATER); `written`, once its blob is written
    and only the look at its tenant is left (the container and the blob's reference): its store then only looks."""

    output: Any
    written: tuple[ContainerClient, dict[str, Any]] | None = None


def _kept(error: str, done: _Succeeded) -> dict[str, Any]:
    """The result of a run whose module succeeded but whose output's store the database stopped: not recorded as
    such (`_run_claimed` runs the store again, never the module), its output kept (STORE_LATER)."""
    return {"ok": False, "error": error, "retryable": True, "stopped": True, STORE_LATER: done}


def _transient(exc: psycopg.Error) -> bool:
    """Whether a database error may clear on its own: the database out of reach or going away (OperationalError:
    a connect failure, AdminShutdown, a pool's PoolTimeout, a lock or statement timeout) or a connection that broke
    (InterfaceError). Not a refusal the database answered (ProgrammingError: InsufficientPrivilege, say;
    IntegrityError, DataError), which runs into the same answer each time it is asked again."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _stored(
    item: WorkItem, key: AttemptKey, ctx: ModuleContext, done: _Succeeded, deadline: float, ended: threading.Event
) -> dict[str, Any]:
    """A successful run's result, its output stored first when it is too large to keep inline (on the module
    thread); a step failure when the store failed, or a result stopped short (STORE_LATER) when the database was out
    of reach. A blob already written (`done.written`) is not written again: only the look at its tenant is made."""
    # A large output is stored by the attempt's deadline too: past it the store's retries held this thread (and
    # its tenant's share) for minutes. Cut off, it fails the attempt retryably as the module's own storage
    # failure does, and nothing is recorded as succeeded without its blob (ADR 0026). By the deadline only, not
    # by a give-up meanwhile: the work is done, and its result, taken back, is recorded rather than run again.
    # Stopped, though, once nobody waits for it (a cancel, a take-over, the host stopping): it held the thread
    # and its tenant's share for up to a retry window per storage call for nothing.
    stored = dataclasses.replace(ctx, abandoned=ended)
    written: list[tuple[ContainerClient, dict[str, Any]]] = [done.written] if done.written is not None else []
    try:
        # The removal of a blob whose tenant was erased meanwhile by its own window alone, from when it is tried:
        # the erasure is what ends the run, and bounded by `ended` it gave up before any delete; bounded by the
        # attempt's deadline, a store away held the thread (and its tenant's share) ~170 s for nobody, where a
        # failed delete is noted for the erased-tenant-blobs timer anyway.
        removal_within = _bounded_for(ctx, REMOVAL_WINDOW_S)
        if done.written is not None:
            # Written by an earlier run of this store, whose look the database stopped: the look alone, again (a
            # re-upload found the blob there, 409, and downloaded it to compare, for nothing).
            container, reference = done.written
            output = kept_reference(
                item.tenant_id,
                container,
                reference,
                within=removal_within,
                look_within_s=_tenant_look_s(deadline, ended),
            )
        else:
            output = claim_check(
                item.tenant_id,
                key,
                done.output,
                within=bounded_by(stored),
                removal_within=removal_within,
                look_within_s=_tenant_look_s(deadline, ended),
                written=lambda container, reference: written.append((container, reference)),
            )
    except StepFailed:
        raise
    except AzureError as exc:
        # A refusal the store's retries do not ride out (a 403, say) is this attempt's failure, as a module's own
        # storage error is; let out, it failed the whole batch, every other item of it retried with it.
        raise StepFailed(f"the storing of {item.action}'s output failed: {type(exc).__name__}: {exc}") from exc
    except psycopg.Error as exc:
        # The look at its tenant (`kept_for_tenant`) met the database out of reach, or the tenant row held past its
        # bound (an erasure under way, whose last blob pass removes the blob). Let out, it failed the whole batch.
        # An error that may clear (`_transient`) keeps the output and only its store runs again, never the module,
        # whose work is done (STORE_LATER): once a renewal is confirmed after it or the claim is taken back after a
        # give-up, until the deadline; with its blob written, only the look runs again. Recorded as the attempt's
        # failure instead, the record needed the database the look had just failed to reach: it failed the batch,
        # redelivered, and the module ran again. The attempt's retryable failure, recorded at once as before: an
        # error the database answered that asking again does not clear (InsufficientPrivilege, say: run again at
        # each renewal until the deadline, an upload, a download and a pooled connection each time, then recorded
        # as a timeout that hid it), and a row held while the database answers and no give-up meanwhile (the
        # erasure holding it ends the attempt anyway).
        why = f"{type(exc).__name__}: {exc}".strip()
        held = isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled)
        if held:
            why = f"its tenant could not be looked at in time (an erasure holding its row, or too little time): {why}"
        error = f"the storing of {item.action}'s output failed: {why}"
        if _transient(exc) and (ctx.abandoned.is_set() or not held):
            return _kept(error, _Succeeded(done.output, written[0] if written else None))
        raise StepFailed(error) from exc
    except Exception as exc:
        # Anything else (a container that cannot be made on a bad setting, say) is the attempt's retryable
        # failure too, as a module's own error is, not the whole batch's; logged with its trace, as that is.
        logger.exception("module-work: storing %s's output for %s failed unexpectedly", item.action, key)
        raise StepFailed(f"the storing of {item.action}'s output failed: {type(exc).__name__}: {exc}") from exc
    return {"ok": True, "output": output}


def _bounded_for(ctx: ModuleContext, window_s: float) -> StorageCall:
    """Storage calls for `ctx`'s attempt, each bounded by `window_s` from when it is made, whatever the attempt's
    deadline, and by nothing else (no `abandoned`: the erasure that ends the run must not cut short the removal of
    the blob it leaves)."""

    def within(what: str, call: Callable[..., T], /) -> T:
        bounded = dataclasses.replace(ctx, abandoned=threading.Event(), deadline=time.monotonic() + window_s)
        return within_deadline(bounded, what, call)

    return within


def _tenant_look_s(deadline: float, ended: threading.Event) -> Callable[[], float]:
    """For `claim_check`, once the blob is written: how long the look at its tenant may take, TENANT_LOOK_S at most
    and never past the attempt's deadline. Not made once nobody waits for the run (`ended`) or its deadline has
    passed (a step failure instead): a blob of a tenant erased meanwhile is then the `erased_tenant_blobs` timer's,
    which the erasure's row delete noted."""

    def bound() -> float:
        if ended.is_set():
            raise Abandoned("the look at the tenant of a stored output was not made: nobody waits for the run")
        left = deadline - time.monotonic()
        if left <= 0:
            raise StepFailed("the look at the tenant of a stored output was not made by its attempt's deadline")
        return min(TENANT_LOOK_S, left)

    return bound


def _record(item: WorkItem, key: AttemptKey, result: dict[str, Any]) -> Outcome | None:
    """Record an attempt's result (once: a result recorded first stands) and answer the verdict to raise, if any."""
    with tenant_transaction(item.tenant_id) as conn:
        attempt, _ = store.finish_attempt(
            conn,
            key,
            ok=result["ok"],
            output=result.get("output"),
            error=result.get("error"),
            retryable=result.get("retryable", True),
            state=result.get("state"),
        )
        if not attempt.raised_by_recorder:
            return None
        return Outcome(str(item.execution_id), key.event_name, raised_verdict(conn, attempt))


def _to_raise(item: WorkItem, key: AttemptKey, attempt: Attempt) -> Outcome | None:
    """The verdict of a result found recorded, to raise again, unless the dispatch that started the attempt waits for
    it (or answered it already)."""
    if not attempt.raised_by_recorder:
        return None
    verdict = attempt.verdict()
    if not verdict["ok"]:  # a failure says whether a cancel was recorded (rules 7): read where it is recorded
        with tenant_transaction(item.tenant_id) as conn:
            verdict = raised_verdict(conn, attempt)
    return Outcome(str(item.execution_id), key.event_name, verdict)


BATCH_HOLD_S = 1.0
"""The longest a batch holds its partition. A batch ends once its items have, and its partition's next batch comes
only then, so an item that waits (for its tenant's place in this process) or runs long (an HTTP call to a slow
endpoint) held up every item behind it in its partition, of every tenant. At this hold's end the items still waiting
are handed back to the hub untouched (one waiting for a module thread under its claim lets the claim go, so that its
copy can run elsewhere at once), and those running go on in this process, under their claims, with a copy of each
handed back too: if this process dies, the copy takes the attempt over once the claim lapses (ADR 0048). Work of a
few milliseconds, most built-in work, ends well within it."""

HAND_BACK_TIMEOUT_S = 10.0
"""How long a batch's hand-back may take: one that has not been sent by then fails the batch, which comes again. Sent
on threads of their own (HAND_BACK_THREADS): on the threads the claims, their renewals and the recorded results use,
a hub slow to answer held those up, and a claim not renewed in time let a copy run its attempt a second time."""
HAND_BACK_THREADS = 4
"""Hand-backs sent at once per process: one per partition a process usually serves; the hub's producer takes them in
turn anyway."""

_hand_back_threads = LazyThreads(HAND_BACK_THREADS, "module-work-hand-back")


def _hand_back_to_hub(carried: Sequence[Carried]) -> None:
    hand_back_work(carried, timeout=HAND_BACK_TIMEOUT_S)


HandBack = Callable[[Sequence[Carried]], None]
"""Puts items back on `module-work`, each with what it came with; raises when they could not all be sent."""


@dataclass
class _Entry:
    """One item of a batch, and whether it waits without doing anything at the moment."""

    carried: Carried
    waiting: bool = True
    """For its tenant's place, or for another copy's result: such an item is stopped at the hold's end (there is
    nothing to undo); one that is not (claiming, running, recording, raising) goes on, unless it waits for a module
    thread under its claim (`stops`)."""
    gone_on: bool = False
    """It went on past its batch, and a copy of it was handed back: if it finds another copy holding the attempt, it
    stops there (the copy on the hub answers for it) instead of waiting as long as the holder runs."""
    start: _Start | None = None
    """Its run's, while it runs or waits for a module thread under its claim."""

    def stops(self) -> bool:
        """At its batch's hold's end: whether it is stopped (and its copy handed back runs it) rather than going on.
        One waiting for a thread under its claim is given up, its claim let go; one whose module runs goes on."""
        return self.waiting or (self.start is not None and self.start.give_up())


_going_on: set[asyncio.Task[bool]] = set()
"""Items that went on past their batch's hold: referenced until they end, which a task must be to be sure to."""


async def process_batch(
    bodies: Iterable[bytes | str],
    client: EventRaiser,
    modules: Mapping[str, Module[Any]] = BUILTIN_MODULES,
    traceparents: Sequence[str | None] = (),
    hand_back: HandBack | None = None,
    first_enqueued: Sequence[str | None] = (),
) -> int:
    """Run a batch's built-in items concurrently, raising each verdict once it is recorded; returns how many were
    raised within the batch's hold.

    Remote items are left to their tenant's workers; copies of one attempt in the batch run once. An item not done
    by BATCH_HOLD_S is handed back to the hub (`hand_back`, else a send on `module-work`) before the batch ends; if
    it runs, it goes on here. If any item could not be recorded, its verdict not raised or an item not handed back
    (within HAND_BACK_TIMEOUT_S), the batch fails after the others were raised, so the function's retry (ADR 0037;
    else the step's timeout) brings the recorded verdict through.
    `traceparents` (by position) are the events' trace contexts: each item's work continues its dispatch's trace;
    `first_enqueued` (by position) when each first went on the hub, which a hand-back carries on.
    """
    entries: dict[tuple[Any, ...], _Entry] = {}
    for index, body in enumerate(bodies):
        parent = traceparents[index] if index < len(traceparents) else None
        first = first_enqueued[index] if index < len(first_enqueued) else None
        for item in parse_items([body]):
            if not item.remote:
                key = (item.tenant_id, item.execution_id, item.step_id, item.phase, item.attempt)
                entries.setdefault(key, _Entry(Carried(item, parent, first)))
    if not entries:
        return 0
    tasks = {asyncio.ensure_future(_placed_handle(entry, client, modules)): entry for entry in entries.values()}
    try:
        _, pending = await asyncio.wait(tasks, timeout=BATCH_HOLD_S)
    except asyncio.CancelledError:  # the host is stopping: nothing goes on, and the batch comes again
        for task in tasks:
            task.cancel()
        raise
    stopped = [task for task in pending if tasks[task].stops()]
    for task in stopped:
        task.cancel()
    for task in pending.difference(stopped):
        tasks[task].gone_on = True
        _go_on(task, tasks[task].carried.item)
    await asyncio.gather(*stopped, return_exceptions=True)
    done = [task for task in tasks if task not in pending and not task.cancelled()]
    failures = [error for task in done if (error := task.exception()) is not None]
    if pending:
        handed = [tasks[task] for task in tasks if task in pending]
        # Sent before the batch ends: its checkpoint must not pass an item that is neither done nor on the hub again.
        try:
            sent = _on_threads(_hand_back_threads, hand_back or _hand_back_to_hub, [entry.carried for entry in handed])
            await asyncio.wait_for(sent, HAND_BACK_TIMEOUT_S)
        except Exception as exc:
            logger.error("module-work: %s items could not be handed back to the hub: %s", len(handed), exc)
            failures.append(exc)
        else:
            logger.info(
                "module-work: %s of %s items handed back to the hub past the batch's hold (%s going on here)",
                len(handed),
                len(tasks),
                len(pending) - len(stopped),
            )
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(tasks)} work items did not complete") from failures[0]
    return sum(1 for task in done if task.result() is True)


def _go_on(task: asyncio.Task[bool], item: WorkItem) -> None:
    """Let an item's task run past its batch; its copy on the hub answers for it if it fails or this process dies."""
    _going_on.add(task)

    def ended(task: asyncio.Task[bool]) -> None:
        _going_on.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning(
                "module-work: %s %s attempt %s failed after its batch; its copy on the hub takes it over: %s",
                item.execution_id,
                item.step_id,
                item.attempt,
                task.exception(),
            )

    task.add_done_callback(ended)


async def _placed_handle(entry: _Entry, client: EventRaiser, modules: Mapping[str, Module[Any]]) -> bool:
    """`_traced_handle` once the item's tenant has a place in this process."""
    async with tenant_place(entry.carried.item.tenant_id):
        entry.waiting = False
        return await _traced_handle(entry, client, modules)


async def _traced_handle(entry: _Entry, client: EventRaiser, modules: Mapping[str, Module[Any]]) -> bool:
    """`_handle` inside a span of the item's execution trace (a consumer of its `module-work` event)."""
    item = entry.carried.item
    attributes = execution_attributes(
        tenant_id=item.tenant_id,
        execution_id=item.execution_id,
        step_id=item.step_id,
        attempt=item.attempt,
        action=item.action,
    )
    with continued_span(f"module {item.action}", entry.carried.traceparent, attributes, kind=SpanKind.CONSUMER):
        return await _handle(entry, client, modules)


async def _handle(entry: _Entry, client: EventRaiser, modules: Mapping[str, Module[Any]]) -> bool:
    """One item from claim to raised verdict; True when a verdict was raised."""
    item = entry.carried.item
    try:
        outcome = await run_attempt(item, modules, entry)
    except Exception as exc:
        logger.error(
            "module-work: %s %s attempt %s could not be recorded: %s",
            item.execution_id,
            item.step_id,
            item.attempt,
            exc,
        )
        raise
    if outcome is None:
        return False
    try:
        await client.raise_event(outcome.execution_id, outcome.event_name, outcome.verdict)
    except Exception as exc:  # one orchestration's trouble must not keep the others' results back
        if no_one_to_tell(exc):
            # Permanent: a retry of the batch (ADR 0037) would only hold its partition for nothing.
            logger.warning("module-work: %s not raised to %s: %s", outcome.event_name, outcome.execution_id, exc)
            return False
        logger.error("module-work: could not raise %s to %s: %s", outcome.event_name, outcome.execution_id, exc)
        raise
    return True
