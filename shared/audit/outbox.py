# intent_ref: platform.audit
"""The audit outbox (migration 0027): a store that cannot join the caller's transaction gets its records from it.

A record of a tenant transaction is queued in `app.audit_outbox` inside that transaction, so it exists exactly when
the change does. Once the transaction has committed and its connection is back in the pool, what it queued is
copied to the store and removed from the outbox; what is left (the store was down, the process died in between) is
copied by `relay`, which the timer `audit_outbox_relay` runs. A copy can happen twice (the timer and a late copy
after a commit): the store takes a record by its id once, so the second changes nothing. A record the store refuses
for good (`RecordRefusedError`: a document it can never take, not an outage) is set aside with the store's answer
(migration 0028): kept, never retried, and out of the way of the tenant's later records.

No copy writes to the store inside a transaction: it reads what it copies in a short one, writes holding nothing
(no connection, no lock, no transaction id: the domain-event relay sends only the events of transactions older than
every one running, so a transaction held open across a throttled store's writes held back every tenant's events and
webhooks), then removes the written rows in a short transaction that first holds the tenant's row (`FOR KEY SHARE`).
Still there, the tenant's erasure has yet to delete its rows and so to make its second pass, which removes what was
written; gone, its erasure may have ended before the writes landed, and the copy deletes from the store what it
wrote (`kept_for_tenant` does the same for a step's blob); that transaction failing, it looks at the tenant again
in another, and names what it wrote at ERROR when it cannot tell. Once the tenant is gone, a copy writes nothing but
the erasure's own record. Two copies of the same rows at once (the relay and a copy after a commit, two relays) each
write them: the store takes a record by its id once, and each removes the rows once written, so none is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import takewhile
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction, tenant_transaction, tenant_write, transaction_bag, when_released
from shared.db.tenant_passes import each_tenant
from shared.policy.actions import Action
from shared.tenants.repository import get_tenant, hold_tenant

logger = logging.getLogger(__name__)

_QUEUE = "INSERT INTO app.audit_outbox (tenant_id, id, document) VALUES (%s, %s, %s)"
# The pinned tenant's (RLS), among those not set aside. A plain read, locking nothing: the rows stay where they are
# while the store writes, and a copy removes only what it wrote.
_WAITING = "SELECT id, document FROM app.audit_outbox WHERE refused_at IS NULL ORDER BY queued_at, id LIMIT %s"
# The pinned tenant's function (migration 0046) deletes them: DELETE on the table would let a tenant's transaction
# LOCK it against every tenant's records. It and the statement below skip a row another holds: one an erasure holds
# goes with it, and waiting for the erasure, which waits for this copy's hold on the tenant row, would deadlock.
_COPIED = "SELECT app.remove_audit_outbox_records(%s)"
_SET_ASIDE = (
    "UPDATE app.audit_outbox SET refused_at = clock_timestamp(), refusal = left(%s, 2000) WHERE id IN"
    " (SELECT id FROM app.audit_outbox WHERE id = %s AND refused_at IS NULL FOR UPDATE SKIP LOCKED)"
)
_WAITING_TENANTS = "SELECT tenant_id FROM app.audit_outbox_tenants(%s) AS waiting (tenant_id)"
_BAG = "audit-outbox"

BATCH = 100
"""Records one relay pass reads per tenant."""
BATCH_S = 1.0
"""Seconds after which a relay pass writes no further record of its batch (a throttled store's writes take seconds
each with the SDK's retries): what it wrote leaves the outbox, and the next pass takes the rest."""
MAX_TENANTS = 100
"""Tenants one relay run serves (those waiting longest); the next run takes the rest."""
MAX_BATCHES = 20
"""Batches one relay run copies per tenant, so that one tenant's backlog cannot hold up the others."""
RUN_BUDGET_S = 45.0
"""Seconds after which a relay run starts no further tenant or batch (ADR 0012). A throttled store's write takes
seconds with the SDK's retries: without it a run lasted tenants x MAX_BATCHES x that, past the host's functionTimeout
at MAX_TENANTS, and every tenant behind a slow one waited out its batches. Within the minute between runs; the
tenants not reached keep their place, their oldest record having waited longest, and the next run starts with them."""
COOLDOWN_S = 30.0
"""After a tenant's failed (or slow, `INLINE_SLOW_S`) copy, that tenant's copies after a commit are left to the relay
this long: a store that is down or throttled for it must not slow every request of it that records something by its
timeouts. Per tenant: one tenant's failing copies (its partition throttled, its records refused) used to leave every
tenant's records to the relay, a minute or two late."""
INLINE_S = 1.0
"""Seconds the copy after a commit may take in all (it runs in the request that committed): its writes are bounded
by what is left of it and retry nothing themselves (`write_budget`); what it does not copy in time the relay copies,
with the store's own retries. Unbounded, a throttled store that answered at last (the SDK's nine retries of up to
30 s, a 65 s read timeout) made every audited request of every tenant wait it out.

The real bound, with Cosmos DB (`cosmos.CosmosAuditStore`): a write is one request (no throttling, regional or
connection retry), its connect and its wait for the answer each at most half of what is left, so the copy ends
within `INLINE_S`. Beyond it: a process's first copy reads the container's properties before its first write (a
second request, its wait also up to half the budget), so it may take up to 1.5 x `INLINE_S`; and the timeouts bound
each wait on the socket, not a service that trickles its answer."""
INLINE_SLOW_S = 0.5
"""A copy after a commit that took this long pauses its tenant's copies as a failure does, though it succeeded: a
store that answers this slowly is throttled or struggling, and the next requests would wait as long."""
FAILING_RUNS_ERROR = 5
"""Relay runs in a row in which a tenant's copy failed before it is logged at ERROR (then every as many runs)."""
DOUBTFUL_TRIES_ASIDE = 5
"""Copies refused alike and doubtfully (`StoreFaultError`) after which a record is set aside after all, provided the
store took some other record since its first such refusal: a store at fault refuses every record, so one that takes
others faults this record alone (a genuinely malformed record alone in its batch waited forever)."""
_DOUBTED_MAX = 10_000
"""Records whose doubtful refusals are counted at most; past it the counts start over."""

Write = Callable[[UUID, dict[str, Any]], None]
"""Writes one document to the store; a document the store already holds (same id) is no error, one it will never
take raises RecordRefusedError."""
Delete = Callable[[UUID, UUID], None]
"""Deletes a tenant's record (tenant id, record id) from the store; one the store does not hold is no error."""


class RecordRefusedError(Exception):
    """The store refused a record for good (the document itself, not the store's state): retrying cannot help.

    `doubtful`: the store gives the same answer when it is itself at fault (Cosmos DB's 400 for a container that does
    not match the code). Refused so beside a record the store took, it is set aside; every record a copy tried refused
    so (one alone too) is taken for the store's fault (`StoreFaultError`), and they wait for the next copy instead of
    all being set aside."""

    def __init__(self, message: str = "", *, doubtful: bool = False) -> None:
        super().__init__(message)
        self.doubtful = doubtful


class StoreFaultError(Exception):
    """Every record a copy tried was refused alike (`RecordRefusedError.doubtful`): the store, not the records, is
    taken to be at fault; the records stay in the outbox."""


_WRITE_BUDGET: ContextVar[float | None] = ContextVar("audit_outbox_write_budget", default=None)


def write_budget() -> float | None:
    """Seconds the write under way may take in all, retries included, with no retries of the store's client's own
    (the copy after a commit, `INLINE_S`); None for the relay's writes, which take the client's retries and
    timeouts. A store's `Write` bounds its call by it."""
    return _WRITE_BUDGET.get()


@contextmanager
def _budget(seconds: float | None) -> Iterator[None]:
    token = _WRITE_BUDGET.set(seconds)
    try:
        yield
    finally:
        _WRITE_BUDGET.reset(token)


@dataclass(frozen=True)
class RelayResult:
    """What one relay run copied."""

    copied: int
    tenants: int
    failed_tenants: int
    set_aside: int = 0


@dataclass(frozen=True)
class Copied:
    """What one tenant's copy did: records now in the store, and records the store refused, set aside."""

    copied: int
    set_aside: int = 0


class AuditOutbox:
    """Queues a transaction's records and copies them to the store with `write` once they are committed."""

    def __init__(
        self,
        write: Write,
        delete: Delete | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
        control_pool: ConnectionPool[Any] | None = None,
        cooldown_s: float = COOLDOWN_S,
        inline_s: float = INLINE_S,
        inline_slow_s: float = INLINE_SLOW_S,
        batch_s: float = BATCH_S,
        run_budget_s: float = RUN_BUDGET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._delete = delete
        self._pool = pool
        self._control_pool = control_pool
        self._cooldown_s = cooldown_s
        self._inline_s = inline_s
        self._inline_slow_s = inline_slow_s
        self._batch_s = batch_s
        self._run_budget_s = run_budget_s
        self._clock = clock
        self._lock = threading.Lock()
        self._resting_until: dict[UUID, float] = {}
        """Per tenant, when its copies after a commit may start again (`COOLDOWN_S`)."""
        self._failed_runs: dict[UUID, int] = {}
        """Per tenant, the relay runs in a row in which its copy failed."""
        self._taken = 0
        """Records the store has taken (written) in this process."""
        self._doubted: dict[UUID, tuple[int, str, int]] = {}
        """Per record refused alike and doubtfully: copies so refused, the refusal's status, and `_taken` at the
        first."""

    def queue(self, conn: psycopg.Connection[Any], tenant_id: UUID, record_id: UUID, document: dict[str, Any]) -> None:
        """Queue `document` inside `conn`'s open transaction of `tenant_id` (RLS refuses another tenant's)."""
        conn.execute(_QUEUE, (tenant_id, record_id, Jsonb(document)))
        queued = transaction_bag(conn, _BAG)
        if queued is None:
            return  # a transaction this context does not hold: the relay copies it
        if not queued:
            when_released(conn, lambda: self._copy_committed(tenant_id, queued), only="commit")
        queued.append((record_id, document))

    def queue_alone(self, tenant_id: UUID, record_id: UUID, document: dict[str, Any]) -> None:
        """Queue `document` in a transaction of its own and copy it once that has committed: a record that joins
        no change (a refusal, an erasure) is kept as surely, and an outage of the store does not fail its request."""
        with tenant_write(tenant_id, pool=self._pool) as conn:
            self.queue(conn, tenant_id, record_id, document)

    def relay(self, *, max_tenants: int = MAX_TENANTS) -> RelayResult:
        """Copy what waits in the outbox, tenant by tenant, oldest first, until `RUN_BUDGET_S` has passed; a tenant
        whose copy fails is logged and left for the next run, and the other tenants still go.

        A tenant whose copy failed in the run before gets one probe (a single batch) once the others are served, so
        that its store's timeouts come after their records; it is logged at ERROR after `FAILING_RUNS_ERROR` failed
        runs in a row. A tenant's copy that succeeds lifts its pause of copies after a commit (`COOLDOWN_S`), one
        that fails starts it."""
        deadline = self._clock() + self._run_budget_s
        with platform_transaction(pool=self._control_pool) as conn:
            tenants = [UUID(str(row["tenant_id"])) for row in conn.execute(_WAITING_TENANTS, (max_tenants,))]
        with self._lock:
            failing = {tenant_id for tenant_id in tenants if tenant_id in self._failed_runs}
            if len(tenants) < max_tenants:  # every waiting tenant is listed: those not are no longer failing
                self._failed_runs = {t: n for t, n in self._failed_runs.items() if t in failing}

        def copy(tenant_id: UUID) -> Copied:
            """One tenant's copy, its batches within the run's deadline."""
            return self._relay_counted(tenant_id, MAX_BATCHES, deadline)

        def probe(tenant_id: UUID) -> Copied:
            """One batch of a tenant whose copy failed in the run before."""
            return self._relay_counted(tenant_id, 1, deadline)

        def reached(group: list[UUID]) -> Iterator[UUID]:
            # Lazily, so that the deadline is looked at before each tenant, not once before them all.
            return takewhile(lambda _: self._clock() < deadline, group)

        # The store or the database being out is expected now and then: the records wait for the next run.
        served = [tenant_id for tenant_id in tenants if tenant_id not in failing]
        probed = [tenant_id for tenant_id in tenants if tenant_id in failing]
        copies = each_tenant(reached(served), copy, what="audit outbox", failures_expected=True)
        probes = each_tenant(reached(probed), probe, what="audit outbox", failures_expected=True)
        done, failed = copies.results + probes.results, copies.failed_count + probes.failed_count
        copied, set_aside = sum(d.copied for d in done), sum(d.set_aside for d in done)
        return RelayResult(copied, len(done) + failed, failed, set_aside)

    def _relay_counted(self, tenant_id: UUID, max_batches: int, deadline: float) -> Copied:
        """`relay_tenant`, counting the tenant's failed runs in a row and pausing or resuming its copies after a
        commit."""
        try:
            done = self.relay_tenant(tenant_id, max_batches=max_batches, deadline=deadline)
        except Exception:
            with self._lock:
                runs = self._failed_runs[tenant_id] = self._failed_runs.get(tenant_id, 0) + 1
            if runs % FAILING_RUNS_ERROR == 0:
                logger.error(
                    "audit outbox: copying the records of tenant %s has failed in %d relay runs in a row; they wait"
                    " in the outbox",
                    tenant_id,
                    runs,
                )
            self._rest(tenant_id)
            raise
        with self._lock:
            self._failed_runs.pop(tenant_id, None)
        self._rested(tenant_id)
        return done

    def relay_tenant(self, tenant_id: UUID, *, max_batches: int = MAX_BATCHES, deadline: float | None = None) -> Copied:
        """Copy up to `max_batches` batches of `tenant_id`'s waiting records, starting none once `deadline` (on the
        clock) has passed; returns what was copied and set aside, and raises the first failure after removing what
        was copied before it.

        Each batch is read in a short transaction that locks nothing, written to the store in no transaction, for up
        to `BATCH` records and `BATCH_S` seconds (and not past `deadline`), and settled in another short one
        (`_copy_batch`)."""
        copied = set_aside = 0
        for _ in range(max_batches):
            if deadline is not None and self._clock() >= deadline:
                break
            with tenant_transaction(tenant_id, pool=self._pool) as conn:
                present = get_tenant(conn, tenant_id) is not None
                rows = conn.execute(_WAITING, (BATCH,)).fetchall()
            records = [(row["id"], row["document"]) for row in rows]
            until = self._clock() + self._batch_s
            if deadline is not None:
                until = min(until, deadline)
            done, rest = self._copy_batch(tenant_id, records, present=present, until=until)
            copied, set_aside = copied + done.copied, set_aside + done.set_aside
            if len(rows) < BATCH and not rest:
                break
        return Copied(copied, set_aside)

    def _copy(self, tenant_id: UUID, records: Sequence[tuple[UUID, dict[str, Any]]]) -> Copied:
        """Copy `records` as `_copy_batch` does, all of them, with no bound of time."""
        return self._copy_batch(tenant_id, records)[0]

    def _copy_batch(
        self,
        tenant_id: UUID,
        records: Sequence[tuple[UUID, dict[str, Any]]],
        *,
        present: bool = True,
        until: float | None = None,
        bounded: bool = False,
    ) -> tuple[Copied, int]:
        """Copy `records` holding no connection while the store writes, then remove the written ones from the outbox
        (and set the refused aside) in one short transaction that holds the tenant row; returns what was copied and
        how many records were left for later (`until` passed), and raises a failure once that is done.

        `present`: the tenant row was there when `records` were read. Gone, only its erasure's record is written and
        any other is removed unwritten (it raced the erasure). Gone by the time the rows are removed, its erasure may
        have made its second pass before these writes landed: what was written is deleted from the store again
        (`_undo`). Still there, the erasure's row delete, and so its second pass, come after these writes. That
        transaction failing, the tenant is looked at again (`_settle_failed`) before the failure is raised.

        `bounded`: each write may take only what is left until `until`, and retries nothing itself (`write_budget`)."""
        dropped = [] if present else [i for i, document in records if not outlives_tenant(document)]
        if dropped:
            logger.warning("audit outbox: %d records of erased tenant %s removed unwritten", len(dropped), tenant_id)
        written, refused, failed, rest = self._write_each(
            tenant_id, records, skip=set(dropped), until=until, bounded=bounded
        )
        # A write that failed may still have landed (a timeout): the tenant gone, it goes too, a 404 being no error.
        tried_ids = {*written, *([] if failed is None else [failed[0]])}
        tried = [(i, document) for i, document in records if i in tried_ids]
        try:
            with tenant_transaction(tenant_id, pool=self._pool) as conn:
                held = hold_tenant(conn, tenant_id)
                self._settle_rows(conn, written + dropped, refused)
        except Exception:
            # The rows stay for the next copy while the tenant is there; once it is gone (its rows with it) nothing
            # comes back to these writes, and they outlived the erasure for good (found by a review of erasure).
            self._settle_failed(tenant_id, tried)
            raise
        if not held:
            undone = self._undo(tenant_id, tried)
            written = [i for i in written if i not in undone]
        if failed is not None:
            raise failed[1]
        return Copied(len(written), len(refused)), rest

    def _settle_failed(self, tenant_id: UUID, tried: Sequence[tuple[UUID, dict[str, Any]]]) -> None:
        """After the transaction settling a copy failed: look at the tenant again and undo what the copy wrote if it is
        gone; when that cannot be told either, name the written records at ERROR for an operator (ADR 0012)."""
        if not tried:
            return
        try:
            with tenant_transaction(tenant_id, pool=self._pool) as conn:
                held = hold_tenant(conn, tenant_id)
        except Exception:
            logger.exception(
                "audit outbox: %d records of tenant %s were written but not settled; if it was erased meanwhile they"
                " outlive it: %s",
                len(tried),
                tenant_id,
                ", ".join(str(i) for i, _ in tried[:50]),
            )
            return
        if not held:
            self._undo(tenant_id, tried)

    def _undo(self, tenant_id: UUID, records: Sequence[tuple[UUID, dict[str, Any]]]) -> set[UUID]:
        """Delete from the store what a copy wrote for a tenant erased meanwhile, but its erasure's record; returns
        the deleted ids. What cannot be deleted outlives the tenant, and is logged by id for an operator (ADR 0012)."""
        outlived = [i for i, document in records if not outlives_tenant(document)]
        undone: set[UUID] = set()
        if self._delete is not None:
            try:
                for record_id in outlived:
                    self._delete(tenant_id, record_id)
                    undone.add(record_id)
            except Exception:
                logger.exception("audit outbox: deleting the records of erased tenant %s failed", tenant_id)
        if undone:
            logger.warning(
                "audit outbox: %d records written as tenant %s was erased deleted again", len(undone), tenant_id
            )
        left = [str(i) for i in outlived if i not in undone]
        if left:
            logger.error(
                "audit outbox: %d records of tenant %s were written as it was erased and outlive it: %s",
                len(left),
                tenant_id,
                ", ".join(left[:50]),
            )
        return undone

    def _write_each(
        self,
        tenant_id: UUID,
        records: Sequence[tuple[UUID, dict[str, Any]]],
        *,
        skip: set[UUID],
        until: float | None,
        bounded: bool = False,
    ) -> tuple[list[UUID], list[tuple[UUID, str]], tuple[UUID, Exception] | None, int]:
        """Write each record not in `skip` to the store, in order, until one fails or `until` (on the clock) has
        passed: the written, the refused (the store will never take them), the failed one and its failure, and how
        many were left unwritten for time. Refused all alike and doubtfully (`RecordRefusedError.doubtful`), none
        being written, they are not refused but failed (`StoreFaultError`): they wait."""
        written: list[UUID] = []
        refused: list[tuple[UUID, str]] = []
        doubtful = 0
        failed: tuple[UUID, Exception] | None = None
        rest = 0
        for index, (record_id, document) in enumerate(records):
            if record_id in skip:
                continue
            if until is not None and (written or refused) and self._clock() >= until:
                rest = len(records) - index
                break
            budget = max(until - self._clock(), 0.001) if bounded and until is not None else None
            try:
                _check_owner(tenant_id, record_id, document)
                with _budget(budget):
                    self._write(tenant_id, document)
            except RecordRefusedError as exc:
                refused.append((record_id, str(exc) or type(exc).__name__))
                doubtful += exc.doubtful
                continue
            except Exception as exc:
                failed = (record_id, exc)
                break
            written.append(record_id)
        at_fault = bool(refused) and not written and doubtful == len(refused)
        self._took(written, [] if at_fault else refused)
        if at_fault:
            # A container that does not match the code refuses every record so: setting them all aside would empty
            # the trail into the outbox's refusals. They wait, and an operator is told; but one refused so
            # `DOUBTFUL_TRIES_ASIDE` times while the store took others is the record's fault, and goes aside.
            settled = self._doubted_long(refused)
            waiting = [entry for entry in refused if entry not in settled]
            if waiting:
                logger.error(
                    "audit outbox: the store refused all %d records of tenant %s it was sent alike (%s); taken for"
                    " the store's fault, they wait",
                    len(waiting),
                    tenant_id,
                    waiting[0][1],
                )
                fault = StoreFaultError(f"every record refused alike: {waiting[0][1]}")
                failed = failed or (waiting[0][0], fault)
            for record_id, reason in settled:
                logger.error(
                    "audit outbox: the store refused record %s of tenant %s alike in %d copies while it took others;"
                    " set aside: %s",
                    record_id,
                    tenant_id,
                    DOUBTFUL_TRIES_ASIDE,
                    reason,
                )
            return written, settled, failed, rest
        for record_id, reason in refused:
            logger.error(
                "audit outbox: the store refused record %s of tenant %s; set aside: %s", record_id, tenant_id, reason
            )
        return written, refused, failed, rest

    def _took(self, written: Sequence[UUID], refused: Sequence[tuple[UUID, str]]) -> None:
        """Count what the store took, and forget the doubtful refusals of records now written or set aside."""
        with self._lock:
            self._taken += len(written)
            for record_id in [*written, *(i for i, _ in refused)]:
                self._doubted.pop(record_id, None)

    def _doubted_long(self, refused: Sequence[tuple[UUID, str]]) -> list[tuple[UUID, str]]:
        """Count one more doubtful refusal of each of `refused` (a copy refused throughout); those refused alike
        `DOUBTFUL_TRIES_ASIDE` times, the store having taken another record since the first, are returned (and
        forgotten): to be set aside."""
        settled: list[tuple[UUID, str]] = []
        with self._lock:
            if len(self._doubted) > _DOUBTED_MAX:
                self._doubted = {}
            for record_id, reason in refused:
                # Alike by status: the store's message names the request (its activity id), which differs each time.
                status = reason.partition(":")[0]
                tries, before, taken = self._doubted.get(record_id, (0, status, self._taken))
                if before != status:  # another refusal: counted afresh
                    tries, taken = 0, self._taken
                tries += 1
                if tries >= DOUBTFUL_TRIES_ASIDE and self._taken > taken:
                    self._doubted.pop(record_id, None)
                    settled.append((record_id, reason))
                else:
                    self._doubted[record_id] = (tries, status, taken)
        return settled

    @staticmethod
    def _settle_rows(conn: psycopg.Connection[Any], removed: list[UUID], refused: list[tuple[UUID, str]]) -> None:
        """Remove the written (or dropped) rows from the outbox and set the refused ones aside, in one round trip."""
        if removed:
            conn.execute(_COPIED, (removed,))
        for record_id, reason in refused:
            conn.execute(_SET_ASIDE, (reason, record_id))

    def _copy_committed(self, tenant_id: UUID, queued: list[tuple[UUID, dict[str, Any]]]) -> None:
        """After a commit: copy what that transaction queued, within `INLINE_S` (it runs in the request). Never
        raises: the change is committed, and what is not copied now the relay copies. A failed copy, or one slower
        than `INLINE_SLOW_S`, leaves the tenant's next copies to the relay for `COOLDOWN_S`."""
        if self._resting(tenant_id):
            return
        started = self._clock()
        try:
            _, rest = self._copy_batch(tenant_id, queued, until=started + self._inline_s, bounded=True)
        except Exception as exc:
            logger.warning("audit outbox: %d records of tenant %s left to the relay: %s", len(queued), tenant_id, exc)
            self._rest(tenant_id)
            return
        took = self._clock() - started
        if rest or took >= self._inline_slow_s:
            logger.warning(
                "audit outbox: copying the records of tenant %s took %.2f s (%d left to the relay); its next copies"
                " are left to the relay for %.0f s",
                tenant_id,
                took,
                rest,
                self._cooldown_s,
            )
            self._rest(tenant_id)

    def _resting(self, tenant_id: UUID) -> bool:
        """Whether the tenant's copies after a commit are paused."""
        with self._lock:
            until = self._resting_until.get(tenant_id)
        return until is not None and self._clock() < until

    def _rest(self, tenant_id: UUID) -> None:
        """Pause the tenant's copies after a commit for `COOLDOWN_S` (forgetting the pauses that have ended)."""
        now = self._clock()
        with self._lock:
            self._resting_until = {t: until for t, until in self._resting_until.items() if until > now}
            self._resting_until[tenant_id] = now + self._cooldown_s

    def _rested(self, tenant_id: UUID) -> None:
        with self._lock:
            self._resting_until.pop(tenant_id, None)


def outlives_tenant(document: dict[str, Any]) -> bool:
    """Whether a record still goes to the store once its tenant is gone: only the control plane's record of the
    tenant's erasure, written after its rows went (ADR 0012: the erased tenant keeps exactly that record)."""
    return (
        document.get("action") == Action.TENANT_ERASE
        and document.get("resourceType") == "Tenant"
        and document.get("resourceId") == document.get("tenantId")
    )


def _check_owner(tenant_id: UUID, record_id: UUID, document: dict[str, Any]) -> None:
    """Refuse a document that names another tenant or record than its row: the store files it by what it names,
    and only the row's tenant is vouched for (RLS); a copy under another would forge that tenant's trail."""
    named_tenant, named_id = document.get("tenantId"), document.get("id")
    if named_tenant != str(tenant_id) or (named_id is not None and named_id != str(record_id)):
        raise RecordRefusedError(
            f"the document names tenant {str(named_tenant)[:40]!r} and record {str(named_id)[:40]!r},"
            f" not its row's {tenant_id} and {record_id}"
        )
