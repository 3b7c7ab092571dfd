# intent_ref: platform.access-control
"""A tenant's own Cedar policies: stored per tenant under RLS, validated on save, cached for decisions."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from pydantic import BaseModel, ConfigDict, Field

from shared.db import tenant_locks
from shared.db.session import held_transaction, tenant_transaction, when_released
from shared.free_text import SHOWN_AS_WRITTEN_IN_LINES, SHOWN_AS_WRITTEN_IN_SOURCE, SHOWN_IN_LINES, SHOWN_IN_SOURCE
from shared.policy.policy_text import MAX_TENANT_POLICY_COST, MAX_TENANT_POLICY_TOTAL_CHARS, policy_cost

MAX_TENANT_POLICIES = 50
"""A tenant's own policies at most: every decision of the tenant evaluates a set of all of them, built again after each
change (at 10,000 characters each, 400 took seconds to build, several times at once)."""
_CACHE_TTL_S = 5.0
_CACHED_TENANTS = 256
"""Tenants whose texts are kept, least recently read dropped first: an erased tenant's would otherwise stay."""


class TenantPolicyCreate(BaseModel):
    """A policy a Tenant.Admin adds."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "no-friday-production",
                    "description": "Nobody executes intents labelled freeze=true.",
                    "policy": 'forbid (principal, action == QP::Action::"intent.execute", resource) '
                    'when { resource.labels.contains("freeze=true") };',
                }
            ]
        },
    )

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    description: Annotated[
        str,
        Field(max_length=500, description=f"What the policy is for, for people to read: {SHOWN_AS_WRITTEN_IN_LINES}"),
        SHOWN_IN_LINES,
    ] = ""
    policy: Annotated[
        str,
        Field(
            min_length=1,
            max_length=10_000,
            description=f"Cedar policy text (one forbid): {SHOWN_AS_WRITTEN_IN_SOURCE}",
        ),
        SHOWN_IN_SOURCE,
    ]


class TenantPolicy(BaseModel):
    """A stored tenant policy."""

    id: UUID
    name: str
    description: str
    policy: str
    created_by: str
    created_at: datetime


class TenantPolicyList(BaseModel):
    """All of a tenant's policies (a tenant has few; no pagination needed)."""

    items: list[TenantPolicy]


class TenantPolicyConflictError(Exception):
    """A policy with that name exists."""


class TenantPolicyBudgetError(Exception):
    """The policy would take the tenant's policies past one of the bounds on them all; `limit` names it."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class TenantPolicyTotalSizeError(TenantPolicyBudgetError):
    """The policy would take the tenant's policies past MAX_TENANT_POLICY_TOTAL_CHARS."""

    def __init__(self, limit: int, stored: int, adding: int) -> None:
        super().__init__(
            f"a tenant's policies are at most {limit} characters in all; this tenant's have {stored} and this one "
            f"{adding}: shorten it or delete another first",
            limit,
        )


class TenantPolicyCostError(TenantPolicyBudgetError):
    """The policy would take what the tenant's policies cost a decision past MAX_TENANT_POLICY_COST."""

    def __init__(self, limit: int, stored: int, adding: int) -> None:
        super().__init__(
            f"a tenant's policies cost at most {limit} expression nodes to evaluate in all; this tenant's cost "
            f"{stored} and this one {adding}: simplify it or delete another first",
            limit,
        )


class StoredTenantPolicyUnreadableError(Exception):
    """A stored policy of the tenant cannot be parsed (written behind the API), so what its policies cost cannot be
    counted; `name` and `policy_id` name it."""

    def __init__(self, name: str, policy_id: UUID, reason: str) -> None:
        super().__init__(
            f"The stored policy {name!r} cannot be parsed ({reason}), so what this tenant's policies cost cannot be "
            "counted; delete it first."
        )
        self.name = name
        self.policy_id = policy_id


class TenantPolicyQuotaError(Exception):
    """The tenant has MAX_TENANT_POLICIES policies already."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"This tenant has {limit} policies, the most it may have; delete one first.")
        self.limit = limit


def list_policies(conn: psycopg.Connection[DictRow]) -> list[TenantPolicy]:
    """The current tenant's policies, by name."""
    rows = conn.execute(
        "SELECT id, name, description, policy, created_by, created_at FROM app.tenant_policies ORDER BY name"
    ).fetchall()
    return [TenantPolicy(**row) for row in rows]


def add_policy(
    conn: psycopg.Connection[DictRow], tenant_id: UUID, spec: TenantPolicyCreate, created_by: str
) -> TenantPolicy:
    """Store a validated policy for the current tenant; TenantPolicyQuotaError when it has MAX_TENANT_POLICIES,
    TenantPolicyTotalSizeError when it would take its policies past MAX_TENANT_POLICY_TOTAL_CHARS, TenantPolicyCostError
    past MAX_TENANT_POLICY_COST, StoredTenantPolicyUnreadableError when a stored one cannot be parsed to count it
    (ValueError when `spec.policy` itself does not parse: it is validated first)."""
    # Counted under the tenant's lock: creates sent at once would otherwise pass the bounds together.
    tenant_locks.hold(conn, "tenant-policies")
    stored = conn.execute("SELECT id, name, policy FROM app.tenant_policies ORDER BY name").fetchall()
    if len(stored) >= MAX_TENANT_POLICIES:
        raise TenantPolicyQuotaError(MAX_TENANT_POLICIES)
    chars = sum(len(row["policy"]) for row in stored)
    if chars + len(spec.policy) > MAX_TENANT_POLICY_TOTAL_CHARS:
        raise TenantPolicyTotalSizeError(MAX_TENANT_POLICY_TOTAL_CHARS, chars, len(spec.policy))
    # Not stored with the row (no migration): `policy_cost` remembers each text's cost by its digest, so only a text
    # this process has not counted yet is parsed (32,000 characters of the longest `like` patterns took ~70-85 ms).
    cost, adding = _stored_cost(stored), policy_cost(spec.policy)
    if cost + adding > MAX_TENANT_POLICY_COST:
        raise TenantPolicyCostError(MAX_TENANT_POLICY_COST, cost, adding)
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO app.tenant_policies (tenant_id, name, description, policy, created_by)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id, name, description, policy, created_by, created_at",
                (tenant_id, spec.name, spec.description, spec.policy, created_by),
            ).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        raise TenantPolicyConflictError(spec.name) from exc
    assert row is not None  # INSERT ... RETURNING
    policy_cache.forget_now_and_after(conn, tenant_id)
    return TenantPolicy(**row)


def _stored_cost(rows: list[DictRow]) -> int:
    """What the stored policies in `rows` cost a decision (`policy_cost`); StoredTenantPolicyUnreadableError names the
    first that cannot be parsed."""
    cost = 0
    for row in rows:
        try:
            cost += policy_cost(row["policy"])
        except ValueError as exc:
            # Written behind the API: its tenant's decisions fail closed until it is deleted, and counting it as
            # costing too much would blame the policy being added.
            raise StoredTenantPolicyUnreadableError(row["name"], row["id"], str(exc)) from None
    return cost


def delete_policy(conn: psycopg.Connection[DictRow], tenant_id: UUID, policy_id: UUID) -> bool:
    """Remove one of the current tenant's policies; False when it does not exist (or is another tenant's)."""
    # Through the pinned tenant's function (migration 0046): DELETE on the table would let a tenant's transaction
    # LOCK it against every tenant.
    row = conn.execute("SELECT app.delete_tenant_policy(%s) AS removed", (policy_id,)).fetchone()
    deleted = row is not None and row["removed"] == 1
    policy_cache.forget_now_and_after(conn, tenant_id)
    return deleted


def _own_failure(failure: BaseException) -> BaseException:
    """A waiter's own exception for the read `failure` ended: one of its type, arguments and attributes (so a pool
    timeout or a dropped connection is answered as the leader's is, 503), with no traceback yet. Raised `from
    failure`, it names the leader's as its cause, which each waiter raising the one object would instead extend in
    its own thread. One that cannot be copied so is wrapped as a RuntimeError.

    Built without calling the original's `__reduce__` (which `copy.copy` does): psycopg's writes into the
    exception's own attributes (its result replaced with a dict, its connection with None), so the leader's lost its
    `pgresult` and `pgconn` to the first waiter's copy. The copy shares those (read only) instead."""
    kind = type(failure)
    try:
        own = kind.__new__(kind, *failure.args)  # the arguments too: some types (OSError) read theirs only here
        own.args = failure.args
        own.__dict__.update(failure.__dict__)
    except Exception:  # noqa: BLE001  # a type built some other way
        own = None
    if not isinstance(own, kind) or own is failure:
        return RuntimeError(f"the tenant's policy read this call waited for failed: {failure!r}")
    notes = getattr(own, "__notes__", None)
    if isinstance(notes, list):
        own.__notes__ = list(notes)  # a note one waiter adds is not the others'
    return own


class _PolicyCache:
    """Per-tenant policy texts, kept briefly so a decision costs no query on the hot path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[UUID, tuple[float, tuple[str, ...]]] = OrderedDict()
        # The tuple last read, kept past `forget` (so equal texts read again stay one tuple) but not past eviction.
        self._last: OrderedDict[UUID, tuple[str, ...]] = OrderedDict()
        # When each tenant was last forgotten, on a counter every `forget` advances: a read that began before may
        # hold the texts from before the change and is not kept. Tenants dropped from it count as forgotten at
        # `_forgotten_floor`, the latest stamp dropped, so dropping one never makes an older read look current.
        self._clock = 0
        self._forgotten: OrderedDict[UUID, int] = OrderedDict()
        self._forgotten_floor = 0
        # The read under way per tenant (at most one outside a caller's transaction), with the clock when it began.
        self._reading: dict[UUID, tuple[int, Future[tuple[str, ...]]]] = {}

    def cached(self, tenant_id: UUID) -> tuple[str, ...] | None:
        """The tenant's texts while the entry read last is fresh (younger than the TTL, and no change since), else
        None: a lookup only, never a read, so an event loop may ask it without a thread hop."""
        with self._lock:
            hit = self._entries.get(tenant_id)
        if hit is not None and time.monotonic() - hit[0] < _CACHE_TTL_S:
            return hit[1]
        return None

    def get(self, tenant_id: UUID) -> tuple[str, ...]:
        """The tenant's texts, read again after the TTL or a change; equal texts come back as one tuple. One read
        at a time per tenant: callers that find a read under way that began after the tenant's last change wait for
        its answer instead of reading too (at an entry's expiry every decision and stream look of the tenant would
        otherwise borrow a pooled connection at once, outside the tenant's permit)."""
        now = time.monotonic()
        # Inside the caller's open transaction of this tenant the read joins it: borrowing a second connection there
        # is how concurrent requests end up waiting on each other for the whole pool. What it reads may hold its own
        # uncommitted changes, so it neither waits for another's read nor lets others wait for it.
        joined = held_transaction(tenant_id)
        with self._lock:
            hit = self._entries.get(tenant_id)
            started = self._clock
            if hit is not None and now - hit[0] < _CACHE_TTL_S:
                return hit[1]
            under_way = self._reading.get(tenant_id) if joined is None else None
            if under_way is not None and self._forgotten.get(tenant_id, self._forgotten_floor) <= under_way[0]:
                flight = under_way[1]  # a read that began after the last change: its answer is this caller's too
            else:
                # Its own read: none is under way, one that is began before a change (it may answer the texts from
                # before it), or the caller's transaction holds the read. Callers after it wait for it.
                flight = None
                leading: Future[tuple[str, ...]] = Future()
                if joined is None:
                    self._reading[tenant_id] = (started, leading)
        if flight is not None:
            failure = flight.exception()  # waits for the read; taken, not raised, so the leader's stays as it was
            if failure is not None:
                raise _own_failure(failure) from failure
            return flight.result()
        if joined is not None:
            texts = _read_texts(joined)
            # What that transaction saw may include its own uncommitted changes: not worth keeping if they vanish.
            when_released(joined, lambda: self.forget(tenant_id), only="rollback")
            return self._keep(tenant_id, now, started, texts)
        try:
            with tenant_transaction(tenant_id) as conn:
                texts = _read_texts(conn)
            texts = self._keep(tenant_id, now, started, texts)
        except BaseException as exc:
            self._land(tenant_id, leading)
            # Those waiting fail as this caller does, not one read after another: each with its own copy of the
            # failure (`_own_failure`), never this one raised again in every waiting thread.
            leading.set_exception(exc)
            raise
        self._land(tenant_id, leading)
        leading.set_result(texts)
        return texts

    def _land(self, tenant_id: UUID, flight: Future[tuple[str, ...]]) -> None:
        """The read `flight` has its answer: callers from now on read (or find the entry) themselves."""
        with self._lock:
            under_way = self._reading.get(tenant_id)
            if under_way is not None and under_way[1] is flight:
                del self._reading[tenant_id]

    def _keep(self, tenant_id: UUID, now: float, started: int, texts: tuple[str, ...]) -> tuple[str, ...]:
        """Keep `texts`, read from `now` by a read that began at the clock's `started`, unless a change was forgotten
        since; equal texts come back as the tuple read before."""
        with self._lock:
            if self._forgotten.get(tenant_id, self._forgotten_floor) > started:
                # A change committed (and was forgotten) while this read ran: what it read may predate the change,
                # and kept for the TTL it would let a forbid just committed go unenforced that long.
                return texts
            # Unchanged texts keep the tuple read before (and the strings in it): a fresh copy every few seconds
            # is what each cache downstream would otherwise keep another copy of.
            if self._last.get(tenant_id) == texts:
                texts = self._last[tenant_id]
            else:
                self._last[tenant_id] = texts
            self._entries[tenant_id] = (now, texts)
            self._keep_recent(tenant_id)
        return texts

    def _keep_recent(self, tenant_id: UUID) -> None:
        """Mark the tenant just read and drop the least recently read past _CACHED_TENANTS (caller holds the lock)."""
        self._entries.move_to_end(tenant_id)
        self._last.move_to_end(tenant_id)
        while len(self._last) > _CACHED_TENANTS:
            dropped, _ = self._last.popitem(last=False)
            self._entries.pop(dropped, None)
        while len(self._entries) > _CACHED_TENANTS:
            dropped, _ = self._entries.popitem(last=False)
            self._last.pop(dropped, None)

    def forget(self, tenant_id: UUID) -> None:
        """Read the tenant's texts again on its next decision, and keep none read before this."""
        with self._lock:
            self._entries.pop(tenant_id, None)
            self._clock += 1
            self._forgotten[tenant_id] = self._clock
            self._forgotten.move_to_end(tenant_id)
            while len(self._forgotten) > _CACHED_TENANTS:
                _, stamp = self._forgotten.popitem(last=False)
                self._forgotten_floor = max(self._forgotten_floor, stamp)

    def forget_now_and_after(self, conn: psycopg.Connection[DictRow], tenant_id: UUID) -> None:
        """Forget the tenant's texts now and again once the change in `conn` has committed: a decision in between
        would otherwise cache the texts from before the change for the whole TTL."""
        self.forget(tenant_id)
        when_released(conn, lambda: self.forget(tenant_id))


def _read_texts(conn: psycopg.Connection[Any]) -> tuple[str, ...]:
    return tuple(row["policy"] for row in conn.execute("SELECT policy FROM app.tenant_policies ORDER BY name"))


policy_cache = _PolicyCache()


def tenant_policy_texts(tenant_id: UUID) -> tuple[str, ...]:
    """The Cedar texts of the tenant's own policies, for a decision."""
    return policy_cache.get(tenant_id)
