# intent_ref: platform.access-control
"""A tenant's policy texts are read once per expiry, not once per caller (ADR 0031, amended 2026-12-07): callers that
find the entry expired while a read of it is under way wait for that read's answer. Before, every decision and every
stream's look at the entry's expiry read the texts itself (100 looks at once: 40 reads, up to 6 at a time), each on a
pooled connection outside the tenant's permit. A read under way that began before a change on this instance is not
waited for: a caller after the change reads the texts as changed."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import psycopg_pool
import pytest

from shared.api.problems import unavailable_dependency
from shared.db.session import tenant_transaction
from shared.policy import tenant_policies
from shared.policy.tenant_policies import policy_cache, tenant_policy_texts
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

CALLERS = 32
FORBID = 'forbid (principal, action == QP::Action::"execution.read", resource) when { resource.labels.contains("%s") };'


def _add_policy(tenant_id: UUID, name: str) -> None:
    """A policy committed on this instance, forgotten by the cache as the API's create does."""
    with tenant_transaction(tenant_id) as conn:
        conn.execute(
            "INSERT INTO app.tenant_policies (tenant_id, name, description, policy, created_by)"
            " VALUES (%s, %s, '', %s, 'test')",
            (tenant_id, name, FORBID % f"{name}=1"),
        )
        policy_cache.forget_now_and_after(conn, tenant_id)


def _expire(tenant_id: UUID) -> None:
    """Age the tenant's entry past the TTL, as time would."""
    with policy_cache._lock:
        _, texts = policy_cache._entries[tenant_id]
        policy_cache._entries[tenant_id] = (-tenant_policies._CACHE_TTL_S, texts)


@dataclass
class Reads:
    """The cache's reads of the database (real ones), counted."""

    count: int = 0
    pauses: list[threading.Event] = field(default_factory=list)
    """The next read waits for the first of these once it has read, before it answers (others arrive meanwhile)."""


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    real = tenant_policies._read_texts
    seen = Reads()

    def counted(conn: Any) -> tuple[str, ...]:
        texts = real(conn)
        seen.count += 1
        if seen.pauses:
            assert seen.pauses.pop(0).wait(20)
        return texts

    monkeypatch.setattr(tenant_policies, "_read_texts", counted)
    yield seen


def test_callers_at_an_expiry_wait_for_one_read(api: ApiHarness, reads: Reads) -> None:  # noqa: F811
    tenant_id = api.provision("policy-single-flight").id
    _add_policy(tenant_id, "one")
    texts = tenant_policy_texts(tenant_id)
    assert reads.count == 1
    _expire(tenant_id)
    released = threading.Event()
    reads.pauses.append(released)
    start = threading.Barrier(CALLERS)

    def call(_: int) -> tuple[str, ...]:
        start.wait()
        return tenant_policy_texts(tenant_id)

    with ThreadPoolExecutor(CALLERS) as pool:
        answers = pool.map(call, range(CALLERS))
        while reads.count < 2:  # the first read has reached the database; the others arrive while it answers
            threading.Event().wait(0.01)
        threading.Event().wait(0.2)
        released.set()
        answers = list(answers)
    assert reads.count == 2, reads.count  # one for the 32 callers at the expiry
    assert answers == [texts] * CALLERS


def test_a_caller_after_a_change_does_not_wait_for_a_read_from_before_it(
    api: ApiHarness,  # noqa: F811
    reads: Reads,
) -> None:
    tenant_id = api.provision("policy-single-flight-change").id
    _add_policy(tenant_id, "one")
    before = tenant_policy_texts(tenant_id)
    _expire(tenant_id)
    released = threading.Event()
    reads.pauses.append(released)
    with ThreadPoolExecutor(1) as pool:
        early = pool.submit(tenant_policy_texts, tenant_id)  # reads, then waits before it answers
        while reads.count < 2:  # it has read
            threading.Event().wait(0.01)
        _add_policy(tenant_id, "two")  # committed (and forgotten) while that read is under way
        after = tenant_policy_texts(tenant_id)
        released.set()
        assert early.result(20) == before
    assert len(after) == 2 and after[:1] == before, after
    assert reads.count == 3  # the caller after the change read the texts itself


WAITERS = 8


@pytest.mark.parametrize(
    "failure",
    [psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"), psycopg.OperationalError("server closed")],
    ids=["pool-timeout", "operational-error"],
)
def test_callers_waiting_for_a_failed_read_each_raise_their_own_failure_caused_by_the_leaders(
    api: ApiHarness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
) -> None:
    tenant_id = api.provision("policy-single-flight-failure").id
    _add_policy(tenant_id, "one")
    tenant_policy_texts(tenant_id)
    _expire(tenant_id)
    waiting: set[int] = set()
    all_waiting = threading.Event()

    class Flight(Future[tuple[str, ...]]):
        """The cache's read under way, noting each thread that waits for its answer."""

        def _waited(self) -> None:
            waiting.add(threading.get_ident())
            if len(waiting) == WAITERS:
                all_waiting.set()

        def result(self, timeout: float | None = None) -> tuple[str, ...]:
            self._waited()
            return super().result(timeout)

        def exception(self, timeout: float | None = None) -> BaseException | None:
            self._waited()
            return super().exception(timeout)

    real = tenant_policies._read_texts

    def failing(conn: Any) -> tuple[str, ...]:
        real(conn)
        assert all_waiting.wait(20)  # every other caller waits for this read
        raise failure

    monkeypatch.setattr(tenant_policies, "Future", Flight)
    monkeypatch.setattr(tenant_policies, "_read_texts", failing)
    raised: dict[str, list[BaseException]] = {"leader": [], "waiter": []}
    leaders_frames: list[int] = []

    def call() -> None:
        try:
            tenant_policy_texts(tenant_id)
        except BaseException as exc:  # noqa: BLE001  # each caller's failure, kept for the assertions
            if exc is failure:
                leaders_frames.append(len(list(traceback.walk_tb(exc.__traceback__))))
            raised["leader" if exc is failure else "waiter"].append(exc)

    with ThreadPoolExecutor(WAITERS + 1) as pool:
        leader = pool.submit(call)
        while policy_cache._reading.get(tenant_id) is None:  # the leader's read is under way
            threading.Event().wait(0.01)
        for _ in range(WAITERS):
            pool.submit(call)
    assert raised["leader"] == [failure]
    waiters = raised["waiter"]
    assert len(waiters) == WAITERS and len({id(exc) for exc in waiters}) == WAITERS
    for exc in waiters:
        assert type(exc) is type(failure) and exc.args == failure.args
        assert exc.__cause__ is failure
        assert unavailable_dependency(exc) == "database"  # answered 503, as the leader's is
    leader.result()
    # No waiter raised the leader's exception in its own thread, so its traceback is the leader's alone.
    assert len(list(traceback.walk_tb(failure.__traceback__))) == leaders_frames[0]
    # The failure is not kept: the next call reads again.
    monkeypatch.setattr(tenant_policies, "_read_texts", real)
    assert len(tenant_policy_texts(tenant_id)) == 1


def test_a_database_failure_copied_for_its_waiters_stays_whole_for_the_leader(
    api: ApiHarness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read fails for real (its statement cancelled by the statement timeout): each waiter's copy keeps its
    sqlstate and its 503, and the leader's exception keeps its result (copying it by pickling's rules wrote into the
    leader's own attributes, its `pgresult` then None)."""
    tenant_id = api.provision("policy-single-flight-cancelled").id
    _add_policy(tenant_id, "one")
    tenant_policy_texts(tenant_id)
    _expire(tenant_id)
    waited = threading.Semaphore(0)

    class Flight(Future[tuple[str, ...]]):
        def exception(self, timeout: float | None = None) -> BaseException | None:
            waited.release()  # a waiter waits for this read's answer
            return super().exception(timeout)

    real = tenant_policies._read_texts
    cancelled: list[psycopg.errors.QueryCanceled] = []

    def cancelled_read(conn: Any) -> tuple[str, ...]:
        real(conn)
        for _ in range(WAITERS):
            assert waited.acquire(timeout=20)  # every other caller waits for this read
        conn.execute("SET LOCAL statement_timeout = '1ms'")
        try:
            conn.execute("SELECT pg_sleep(10)")
        except psycopg.errors.QueryCanceled as exc:
            cancelled.append(exc)
            raise
        raise AssertionError("the statement timeout did not cancel the read")

    monkeypatch.setattr(tenant_policies, "Future", Flight)
    monkeypatch.setattr(tenant_policies, "_read_texts", cancelled_read)
    raised: list[BaseException] = []

    def call() -> None:
        try:
            tenant_policy_texts(tenant_id)
        except BaseException as exc:  # noqa: BLE001  # each caller's failure, kept for the assertions
            raised.append(exc)

    with ThreadPoolExecutor(WAITERS + 1) as pool:
        pool.submit(call)
        while policy_cache._reading.get(tenant_id) is None:  # the leader's read is under way
            threading.Event().wait(0.01)
        for _ in range(WAITERS):
            pool.submit(call)
    [failure] = cancelled
    waiters = [exc for exc in raised if exc is not failure]
    assert len(raised) == WAITERS + 1 and len(waiters) == WAITERS
    assert failure.pgresult is not None and failure.diag.sqlstate == "57014"
    assert unavailable_dependency(failure) == "database"
    for exc in waiters:
        assert isinstance(exc, psycopg.errors.QueryCanceled) and exc.__cause__ is failure
        assert exc.sqlstate == "57014" and exc.diag.sqlstate == "57014"
        assert unavailable_dependency(exc) == "database"  # answered 503, as the leader's is
    monkeypatch.setattr(tenant_policies, "_read_texts", real)
    assert len(tenant_policy_texts(tenant_id)) == 1
