# intent_ref: platform.tenant-isolation
"""Transactions in which row-level security sees exactly one tenant, or none."""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg_pool import ConnectionPool

from shared.config import SettingsError, get_settings
from shared.db.pipeline_errors import statement_error
from shared.db.pool import get_control_pool, get_pool
from shared.db.roles import PLATFORM_ROLE, RUNTIME_ROLE
from shared.observability import metrics

logger = logging.getLogger(__name__)
T = TypeVar("T")

TAMPERED_SESSION = "QPT01"
"""What the tenant pin answers in a session holding a statement prepared by SQL (migration 0047): SQL in an earlier
borrower's transaction put it there, under a name the driver may run in this one."""


TENANT_REFERENCE = "_tenant_id_fkey"
"""How the name of every foreign key from a tenant row to its tenant (`tenant_id REFERENCES app.tenants`) ends: the
name Postgres gives it (a test holds the catalog to it)."""
TENANT_RECORD_CHECK = "_needs_its_tenant"
"""How the constraint a refused audit record names ends (`audit_events_needs_its_tenant`, `audit_outbox_...`): the
runtime role's record holds its tenant's row as a foreign key would, without one (migration 0060), and is refused
(insufficient privilege, as migration 0041 refused it) when that row is gone."""
_erased_under: weakref.WeakSet[BaseException] = weakref.WeakSet()
_TENANT_THERE = "SELECT 1 FROM app.tenants WHERE id = %s"


def tenant_erased_under(exc: BaseException) -> bool:
    """Whether `exc` ended a tenant transaction by a row's reference to its tenant (a foreign key, or an audit
    record's check of its tenant row), refused because that tenant's row was gone, and the tenant was then found
    gone: erased while the transaction waited on its row."""
    return exc in _erased_under


class IdleTransactionEndedError(psycopg.OperationalError):
    """The server ended the session of a transaction that sat idle past IDLE_IN_TRANSACTION_TIMEOUT_MS, rolling it
    back; its connection is closed, and the pool replaces it. An OperationalError, so a request is answered 503 with
    Retry-After (as psycopg raises it, an InternalError, it was a 500 logged with its traceback)."""


class TamperedSessionError(psycopg.OperationalError):
    """The borrowed connection's session was tampered with by SQL in an earlier transaction: closed, not reused. An
    OperationalError, so the request is answered 503 with Retry-After and its retry gets another connection."""


_SET_RUNTIME_ROLE = sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(RUNTIME_ROLE)).as_bytes()
_SET_PLATFORM_ROLE = sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(PLATFORM_ROLE)).as_bytes()
_PIN_TENANT = "SELECT app.pin_tenant(%s)"
# Insurance against session state an earlier borrower left: a plain SET (or SET ROLE), a LISTEN (whose
# notifications of every tenant would pile up unread in this process), a session advisory lock. It runs at the start
# of every transaction, in the same round trip as BEGIN, instead of as a separate round trip on every return to the
# pool; if the transaction rolls back, so does this reset (the unlock excepted), and the next transaction resets
# again. All are allowed in a transaction block, and none is needed across transactions by the pools' users: the
# app listens, holds session locks and keeps cursors only on connections of its own, never pooled ones. Last, cursors
# declared WITH HOLD, which outlive their transaction (one under the audit export's cursor name failed every later
# export on the session). The transaction's own characteristics come first, in its BEGIN (`_TRANSACTION_MODES`).
_SESSION_RESETS = (
    b"RESET ALL",
    b"RESET ROLE",
    b"UNLISTEN *",
    b"SELECT pg_advisory_unlock_all()",
    b"CLOSE ALL",
)
_TRANSACTION_MODES = b"ISOLATION LEVEL READ COMMITTED, READ WRITE, NOT DEFERRABLE"
"""Every transaction's characteristics, named at its start: a session default (`default_transaction_read_only`, an
isolation level) that SQL of an earlier borrower set takes effect at BEGIN, before the reset's RESET ALL, and refused
every later borrower's writes until a transaction committed."""
TIMER_LOCK_TIMEOUT_MS = 2000
"""How long a timer pass's tenant transaction waits for a lock (bounded_lock_waits) before that tenant fails."""
# The bounds every transaction runs under (ADR 0043), set transaction-local by its prologue, after the reset (which
# would undo them): so they hold on every pooled connection of either login, in Azure too, whatever SQL in an
# earlier transaction set. Read when each transaction opens, so a test can make them small.
STATEMENT_TIMEOUT_MS = 60_000
"""How long one statement of a tenant's or the runtime's transaction may run, its lock waits included, before the
server cancels it (psycopg.errors.QueryCanceled: answered 503). Their statements take milliseconds."""
CONTROL_STATEMENT_TIMEOUT_MS = 600_000
"""The same for a control-plane transaction, whose tenant erasure deletes all of a tenant's rows of a table in one
statement."""
IDLE_IN_TRANSACTION_TIMEOUT_MS = 300_000
"""How long a transaction may sit between two statements before the server ends its session, which rolls it back
and releases its locks: above an Event Hubs send with its first token (the outbox relay sends inside its
transaction)."""
IDLE_TRANSACTION_ENDED = "25P03"
"""What the next statement of a transaction gets once the server has ended its session for sitting idle."""


@dataclass(frozen=True)
class _Prologue:
    """What a transaction runs first, after the session reset: its role, and for a tenant's the tenant pin."""

    role: bytes
    tenant_id: UUID | None = None
    lock_timeout_ms: int | None = None
    """The transaction's lock_timeout; None leaves the server's (no bound), as on the request path."""
    statement_timeout_ms: int = field(kw_only=True)
    """The transaction's statement_timeout (ADR 0043)."""
    idle_timeout_ms: int = field(kw_only=True)
    """The transaction's idle_in_transaction_session_timeout (ADR 0043)."""

    def run(self, conn: psycopg.Connection[Any]) -> None:
        """The reset and the prologue statement by statement (in a pipeline, where they still travel together).

        Never prepared: the driver prepares a statement it has run five times, and SQL in an earlier transaction of
        the session could put its own text under that name, a pin that pins nothing, so that the check of migration
        0047 inside `app.pin_tenant` never ran and every later pipelined transaction on the session ran unpinned."""
        conn.execute(b"SET TRANSACTION " + _TRANSACTION_MODES, prepare=False)  # the driver's BEGIN names none
        for reset in _SESSION_RESETS:
            conn.execute(reset, prepare=False)
        conn.execute(self.role, prepare=False)
        if self.tenant_id is not None:
            conn.execute(_PIN_TENANT, (self.tenant_id,), prepare=False)
        conn.execute(self._bounds(), prepare=False)

    def script(self) -> bytes:
        """BEGIN, the reset and the prologue as one simple query: one round trip, and the client's work of one
        statement instead of seven (about 0.1 ms less CPU per transaction when they were five,
        docs/performance.md)."""
        parts = [b"BEGIN " + _TRANSACTION_MODES, *_SESSION_RESETS, self.role]
        if self.tenant_id is not None:
            # A literal, since a simple query takes no parameters: a UUID's text is hex digits and dashes only.
            parts.append(b"SELECT app.pin_tenant(" + sql.Literal(self.tenant_id).as_bytes() + b")")
        parts.append(self._bounds())
        return b"; ".join(parts)

    def _bounds(self) -> bytes:
        return _set_bounds(self.statement_timeout_ms, self.idle_timeout_ms, self.lock_timeout_ms)


@functools.lru_cache(maxsize=16)
def _set_bounds(statement_ms: int, idle_ms: int, lock_ms: int | None) -> bytes:
    """One statement that sets the transaction's bounds, transaction-local; cached, as it is the same every time.

    Literals of ints (the constants above, or one bounded_lock_waits checked): a simple query takes no parameters."""
    bounds = [("statement_timeout", statement_ms), ("idle_in_transaction_session_timeout", idle_ms)]
    if lock_ms is not None:
        bounds.append(("lock_timeout", lock_ms))
    calls = ", ".join(f"set_config('{name}', '{int(ms)}ms', true)" for name, ms in bounds)
    return f"SELECT {calls}".encode()


class NestedBorrowError(RuntimeError):
    """A context that holds a pooled connection asked the same pool for another.

    Every request doing that at once waits on the others until the pool's timeout: one tenant's burst stalls all.
    """


Outcome = Literal["commit", "rollback"]
"""How a transaction ended (a COMMIT that failed is a rollback)."""


@dataclass(eq=False)
class _Hold:
    """A connection this context has borrowed and not returned yet, and what to do once it is back."""

    pool: ConnectionPool[Any]
    conn: psycopg.Connection[Any] | None = None
    tenant_id: UUID | None = None
    """The tenant pinned in its transaction; None for runtime and control-plane transactions."""
    joinable: bool = False
    """Whether others may run statements in its transaction (not while it is pipelined, as tenant_write is)."""
    deferred: list[tuple[Outcome | None, Callable[[], None]]] = field(default_factory=list)
    """Work to run once the connection is back, each after either outcome of its transaction or only after one."""
    bags: dict[str, list[Any]] = field(default_factory=dict)

    def due(self, outcome: Outcome) -> list[Callable[[], None]]:
        """What runs once the connection is back: the work bound to no outcome, then the work bound to `outcome`."""
        return [work for only, work in self.deferred if only is None] + [
            work for only, work in self.deferred if only == outcome
        ]


# A context variable, not a thread-local: FastAPI and anyio run each worker-thread call in a copy of the caller's
# context, so a hold is seen exactly by the code that runs inside its `with` block, on whichever thread.
_holds: ContextVar[tuple[_Hold, ...]] = ContextVar("qp_db_holds", default=())
_nesting_allowed: ContextVar[bool] = ContextVar("qp_db_nesting_allowed", default=False)
_lock_timeout_ms: ContextVar[int | None] = ContextVar("qp_db_lock_timeout_ms", default=None)


def _nested_borrow_is_fatal() -> bool:
    try:
        return get_settings().QP_ENVIRONMENT == "local"
    except SettingsError:  # a piece tested without settings: loud is right there too
        return True


def _refuse_nested_borrow(pool: ConnectionPool[Any]) -> None:
    message = (
        f"this request already holds a connection of pool {pool.name!r} and asked it for another; "
        "reuse the open transaction (shared.db.session.held_transaction) or defer the work until it ends "
        "(when_released)"
    )
    if _nested_borrow_is_fatal():
        raise NestedBorrowError(message)
    # Deployed, the borrow goes ahead (it waits at most the pool's timeout, then 503): a crash would be worse.
    logger.error("nested borrow: %s", message, stack_info=True)


@contextmanager
def allow_nested_borrow() -> Iterator[None]:
    """Let the block borrow from a pool whose connection this context already holds.

    Only for work of which one runs at a time per process (a timer), never on the request path: a lone borrower
    cannot wait on itself, but many concurrent ones wait on each other.
    """
    token = _nesting_allowed.set(True)
    try:
        yield
    finally:
        _nesting_allowed.reset(token)


@contextmanager
def bounded_lock_waits(timeout_ms: int = TIMER_LOCK_TIMEOUT_MS) -> Iterator[None]:
    """Within the block (threads started from it with a copy of its context too), every tenant transaction waits
    at most `timeout_ms` for a lock, then fails with psycopg.errors.LockNotAvailable.

    For timer passes that go through the tenants one after another: a row one tenant's long transaction holds fails
    that tenant's share of the pass (logged, left for the next run) instead of holding up every other tenant's.
    Never on the request path, whose lock waits are part of its semantics (a duplicate request waits and replays).
    """
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms <= 0:
        raise ValueError("timeout_ms must be a positive int")
    token = _lock_timeout_ms.set(timeout_ms)
    try:
        yield
    finally:
        _lock_timeout_ms.reset(token)


@contextmanager
def _borrow(
    pool: ConnectionPool[Any], timeout_s: float | None = None
) -> Iterator[tuple[psycopg.Connection[Any], _Hold]]:
    """Borrow from `pool` as this context's hold; what was deferred to its release runs once it is back.

    `timeout_s` bounds the wait for a connection (psycopg_pool.PoolTimeout past it); None waits the pool's timeout."""
    if not _nesting_allowed.get() and any(hold.pool is pool for hold in _holds.get()):
        _refuse_nested_borrow(pool)
    hold = _Hold(pool)
    _holds.set((*_holds.get(), hold))
    # Also a failed COMMIT is a rollback: the transaction inside ends before this block sees the error.
    outcome: Outcome = "rollback"
    failure: BaseException | None = None
    try:
        asked = time.perf_counter()
        with pool.connection(timeout=timeout_s) as conn:
            metrics.pool_wait(pool.name, time.perf_counter() - asked)
            hold.conn = conn
            try:
                yield conn, hold
            except psycopg.Error as exc:
                cause = statement_error(exc) if isinstance(exc, psycopg.errors.PipelineAborted) else exc
                if cause.sqlstate == TAMPERED_SESSION:
                    conn.close()  # the pool replaces a closed connection
                    raise TamperedSessionError("a pooled connection was tampered with; it is closed") from exc
                if cause.sqlstate == IDLE_TRANSACTION_ENDED:
                    # The server closed the session; so is the connection, and the pool replaces it on its return.
                    raise IdleTransactionEndedError(
                        "the transaction sat idle between statements past the bound "
                        f"({IDLE_IN_TRANSACTION_TIMEOUT_MS} ms): the server rolled it back and ended its session"
                    ) from exc
                raise
            outcome = "commit"
    except BaseException as exc:
        failure = exc
        raise
    finally:
        # Removed by identity rather than reset by token: robust however the caller's blocks interleave.
        _holds.set(tuple(other for other in _holds.get() if other is not hold))
        if failure is not None and hold.tenant_id is not None:
            _note_tenant_erased(failure, pool, hold.tenant_id)
        _run_deferred(hold.due(outcome), failure)


def _note_tenant_erased(failure: BaseException, pool: ConnectionPool[Any], tenant_id: UUID) -> None:
    """Mark `failure` (tenant_erased_under) when it is a reference to the tenant refused and the transaction's tenant
    is gone: row-level security lets the transaction write rows of its pinned tenant only, so the refused reference
    was to it, and a tenant row once gone never comes back. Looked up once the connection is back, so the request's
    answer (401, as an unknown tenant's) tells an erasure from a bug without any I/O of its own."""
    cause = statement_error(failure) if isinstance(failure, psycopg.errors.PipelineAborted) else failure
    if isinstance(cause, psycopg.errors.ForeignKeyViolation):
        suffix = TENANT_REFERENCE
    elif isinstance(cause, psycopg.errors.InsufficientPrivilege):
        # An audit record that waited on the erasure's lock of the tenant row (migration 0060); any other refusal
        # of row-level security or of a grant names no such constraint, and stays a bug.
        suffix = TENANT_RECORD_CHECK
    else:
        return
    if not (cause.diag.constraint_name or "").endswith(suffix):
        return
    try:
        with _transaction(pool, _tenant_prologue(tenant_id)) as conn:
            gone = conn.execute(_TENANT_THERE, (tenant_id,)).fetchone() is None
    except Exception as exc:  # the transaction's own failure stands; unmarked, it is answered as a bug would be
        logger.warning("whether tenant %s is gone could not be looked up: %s", tenant_id, exc)
        return
    if gone:
        _erased_under.add(cause)
        if cause is not failure:
            _erased_under.add(failure)


def _run_deferred(callbacks: list[Callable[[], None]], failure: BaseException | None = None) -> None:
    """Run every callback; the first one's error is raised after the others have run, in place of `failure` (what
    ended the transaction, if anything did) and chained to it: a deferred callback is a decision's record, which
    must not be lost in silence (ADR 0017). A record that has nothing left to record to (its tenant erased meanwhile)
    drops itself without an error, leaving `failure` the caller's answer."""
    first: Exception | None = None
    for callback in callbacks:
        try:
            callback()
        except Exception as exc:  # the others still run; the first failure is the caller's to see
            logger.warning("work deferred until a connection was released failed: %s", exc)
            first = first or exc
    if first is not None:
        raise first from failure


def _app_pool(pool: ConnectionPool[Any] | None) -> ConnectionPool[Any]:
    return pool if pool is not None else get_pool()


def holding(pool: ConnectionPool[Any] | None = None) -> psycopg.Connection[Any] | None:
    """The connection of `pool` (default: the tenant pool) this context holds, innermost first; None if none."""
    holds = _holds.get()
    if not holds:  # the common case outside a transaction, without touching (or opening) the pool
        return None
    target = _app_pool(pool)
    return next((hold.conn for hold in reversed(holds) if hold.pool is target), None)


def held_transaction(tenant_id: UUID, *, pool: ConnectionPool[Any] | None = None) -> psycopg.Connection[Any] | None:
    """This context's open transaction of `tenant_id` on `pool` (default: the tenant pool), for statements that
    would otherwise borrow a second connection; None when there is none (or it is pipelined)."""
    holds = _holds.get()
    if not holds:
        return None
    target = _app_pool(pool)
    for hold in reversed(holds):
        if hold.pool is target:
            return hold.conn if hold.joinable and hold.tenant_id == tenant_id else None
    return None


def when_released(conn: psycopg.Connection[Any], callback: Callable[[], None], *, only: Outcome | None = None) -> bool:
    """Run `callback` once this context's transaction on `conn` has ended and `conn` is back in its pool (with
    `only`, only if that transaction ended so: "commit" or "rollback"); False when `conn` is not held here.

    For work that must not join the transaction (a record that outlives its rollback, a copy of what it committed
    to a store outside the database) and must not borrow while it is open. A callback's error is raised after the
    others have run, in place of the transaction's own (chained to it): a record that could not be written is never
    lost in silence.
    """
    for hold in reversed(_holds.get()):
        if hold.conn is conn:
            hold.deferred.append((only, callback))
            return True
    return False


def transaction_bag(conn: psycopg.Connection[Any], name: str) -> list[Any] | None:
    """A list that lives as long as this context's transaction on `conn` (one per `name`), for what a callback
    registered with `when_released` hands on once it has ended; None when `conn` is not held here.

    The transaction's own, not the connection's: once it is back in its pool the connection serves another.
    """
    for hold in reversed(_holds.get()):
        if hold.conn is conn:
            return hold.bags.setdefault(name, [])
    return None


def enter_tenant(conn: psycopg.Connection[Any], tenant_id: UUID) -> None:
    """Inside an open transaction: run as the runtime role with `tenant_id` pinned (what tenant_transaction does)."""
    if not isinstance(tenant_id, UUID):
        raise TypeError("tenant_id must be a UUID")
    # SET LOCAL ROLE: whatever the login, the statements run as the non-owner runtime role.
    conn.execute(_SET_RUNTIME_ROLE)
    # The pin lives for this transaction only and cannot be changed within it (migration 0008).
    conn.execute(_PIN_TENANT, (tenant_id,))


def _tenant_prologue(tenant_id: UUID) -> _Prologue:
    if not isinstance(tenant_id, UUID):  # checked before borrowing a connection
        raise TypeError("tenant_id must be a UUID")
    return _bounded(_SET_RUNTIME_ROLE, tenant_id, _lock_timeout_ms.get())


def _bounded(
    role: bytes, tenant_id: UUID | None = None, lock_timeout_ms: int | None = None, *, control: bool = False
) -> _Prologue:
    """A prologue with the bounds as they are now (the module's values are read here, not bound at import)."""
    statement_ms = CONTROL_STATEMENT_TIMEOUT_MS if control else STATEMENT_TIMEOUT_MS
    return _Prologue(
        role,
        tenant_id,
        lock_timeout_ms,
        statement_timeout_ms=statement_ms,
        idle_timeout_ms=IDLE_IN_TRANSACTION_TIMEOUT_MS,
    )


@contextmanager
def _transaction(
    pool: ConnectionPool[Any], prologue: _Prologue, borrow_timeout_s: float | None = None
) -> Iterator[psycopg.Connection[DictRow]]:
    """Borrow a connection (waiting at most `borrow_timeout_s` when given, else the pool's timeout), open a
    transaction and run its prologue, all in one round trip to the server."""
    with _borrow(pool, borrow_timeout_s) as (conn, hold):
        # The connections are autocommit: the script's BEGIN opens the transaction, so a `conn.transaction()` in
        # the block is a savepoint, and the caller's statements run (and fail) one by one as usual.
        try:
            conn.execute(prologue.script())
            hold.tenant_id, hold.joinable = prologue.tenant_id, True
            yield conn
        except BaseException:
            _roll_back(conn)
            raise
        conn.commit()


def _roll_back(conn: psycopg.Connection[Any]) -> None:
    # As psycopg's own transaction block does: a connection in a bad state must not hide the error that ended it.
    try:
        conn.rollback()
    except Exception as exc:
        logger.warning("error ignored in the rollback of a failed transaction: %s", exc)


@contextmanager
def tenant_write(tenant_id: UUID, *, pool: ConnectionPool[Any] | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """A tenant transaction whose statements and COMMIT travel in one round trip (for writes read back after it).

    Cursors' results can be read once the block has ended, when the COMMIT has been acknowledged. A server error
    surfaces at the end of the block, and the pool's connection context rolls the failed transaction back (the
    COMMIT queued behind the failed statement was skipped).
    """
    with _write(pool or get_pool(), _tenant_prologue(tenant_id)) as conn:
        yield conn


@contextmanager
def entry_point_statement(*, pool: ConnectionPool[Any] | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """A connection for statements that each commit by themselves, with no transaction block and no prologue.

    Only for a statement that calls SECURITY DEFINER entry points and touches no table itself (the devhost's Event
    Hubs log): such a function runs as its owner and sets its own search path whatever the session's state, so
    neither the runtime role nor the session reset would change what it does, and skipping them saves the six
    statements they cost (docs/performance.md). A statement on a table the policies guard belongs in a transaction.
    """
    with _borrow(pool or get_pool()) as (conn, _hold):
        if not conn.autocommit:
            # The statement would open a transaction that the pool rolls back on return: written, then lost.
            raise RuntimeError("entry_point_statement needs a pool of autocommit connections")
        yield conn


@contextmanager
def _write(pool: ConnectionPool[Any], prologue: _Prologue) -> Iterator[psycopg.Connection[DictRow]]:
    # psycopg.Transaction, not conn.transaction(): in a pipeline the latter syncs around the block (two more round
    # trips); here the pipeline's one sync at its end covers BEGIN, the statements and COMMIT. Not joinable: a
    # statement whose result is needed at once would sync the pipeline in the middle.
    try:
        with _borrow(pool) as (conn, hold), conn.pipeline(), psycopg.Transaction(conn):
            hold.tenant_id = prologue.tenant_id
            prologue.run(conn)
            yield conn
    except psycopg.errors.PipelineAborted as exc:
        cause = statement_error(exc)
        if cause is not exc:
            raise cause from None
        raise


@contextmanager
def tenant_transaction(
    tenant_id: UUID, *, pool: ConnectionPool[Any] | None = None, borrow_timeout_s: float | None = None
) -> Iterator[psycopg.Connection[DictRow]]:
    """Open one transaction, as the runtime role, in which RLS sees only `tenant_id`'s rows.

    `borrow_timeout_s` bounds the wait for a pooled connection (psycopg_pool.PoolTimeout past it); None waits the
    pool's timeout."""
    with _transaction(pool or get_pool(), _tenant_prologue(tenant_id), borrow_timeout_s) as conn:
        yield conn


@contextmanager
def runtime_transaction(*, pool: ConnectionPool[Any] | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """Open one transaction as the runtime role with no tenant: tenant tables show zero rows."""
    with _transaction(pool or get_pool(), _bounded(_SET_RUNTIME_ROLE)) as conn:
        yield conn


@contextmanager
def platform_transaction(*, pool: ConnectionPool[Any] | None = None) -> Iterator[psycopg.Connection[DictRow]]:
    """Open one transaction as the control-plane role: every tenant row, and no tenant's data."""
    # The control plane's own pool: its login is the only one that may become qp_platform (ADR 0018).
    with _transaction(pool or get_control_pool(), _bounded(_SET_PLATFORM_ROLE, control=True)) as conn:
        yield conn


DEADLOCK_ATTEMPTS = 3


def retried_on_deadlock(work: Callable[[], T], *, attempts: int = DEADLOCK_ATTEMPTS) -> T:
    """`work`, which opens and commits transactions of its own, run again when Postgres ended one of them as a
    deadlock's victim: it rolled back whole, so the next run answers as the request would have a moment later.

    The engine's writers take an execution's rows in one order (its open attempts, then the execution; several
    executions in creation order; ADR 0014), so none of them is a deadlock's victim on those rows; this is a belt for
    rows outside that order (another table's, a first-generation activity's). The engine's activities are retried
    anyway; a request must not answer 503 for it."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except psycopg.errors.DeadlockDetected:
            if attempt == attempts:
                raise
            logger.info("a transaction was a deadlock's victim; running it again (%d of %d)", attempt + 1, attempts)
    raise AssertionError("unreachable: the last attempt returns or raises")
