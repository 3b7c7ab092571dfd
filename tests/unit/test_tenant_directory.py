# intent_ref: platform.tenants
"""The Entra tenant id cache stays bounded: every Entra tenant with a validly signed token leaves an answer (an
unprovisioned one too), and answers past their TTL, then the oldest, make room, whatever tenants call."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from shared.tenants.repository import TenantDirectory


class _NoRows:
    """A connection whose lookup finds no tenant, counting the lookups and the times it was taken."""

    def __init__(self) -> None:
        self.lookups = 0
        self.taken = 0

    def execute(self, *_: Any) -> _NoRows:
        self.lookups += 1
        return self

    def fetchone(self) -> None:
        return None


def _factory(
    conn: _NoRows, *, after: Callable[[], None] | None = None
) -> Callable[[], contextlib.AbstractContextManager[_NoRows]]:
    """The connection factory the directory reads with: it lends `conn`, counting each time, and runs `after` once
    the read is done with it (before the directory stores the answer)."""

    @contextlib.contextmanager
    def factory() -> Iterator[_NoRows]:
        conn.taken += 1
        yield conn
        if after is not None:
            after()

    return factory


def test_the_cache_keeps_at_most_its_bound_and_the_newest_answers(monkeypatch: Any) -> None:
    conn = _NoRows()
    factory = _factory(conn)
    monkeypatch.setattr(TenantDirectory, "MAX_ENTRIES", 50)
    directory = TenantDirectory(ttl_s=3600)
    ids = [uuid.uuid4() for _ in range(120)]
    for entra_id in ids:
        assert directory.resolve(factory, entra_id) is None
    assert len(directory._cache) <= 50
    assert directory.cached(ids[-1]) == (True, None)  # the newest answer is kept
    assert directory.cached(ids[0]) == (False, None)  # the oldest made room
    assert conn.lookups == 120


def test_answers_past_their_ttl_go_first(monkeypatch: Any) -> None:
    from shared.tenants import repository

    factory = _factory(_NoRows())
    now = [0.0]
    monkeypatch.setattr(repository.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(TenantDirectory, "MAX_ENTRIES", 3)
    directory = TenantDirectory(ttl_s=5.0)
    stale = [uuid.uuid4() for _ in range(3)]
    for entra_id in stale:
        directory.resolve(factory, entra_id)
    now[0] = 10.0  # all three past their TTL
    fresh = uuid.uuid4()
    directory.resolve(factory, fresh)  # a fourth: over the bound
    assert list(directory._cache) == [fresh]  # the stale answers went, not the one just stored
    assert directory.cached(fresh) == (True, None)


class _HeldRead(_NoRows):
    """A lookup that waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def execute(self, *_: Any) -> _NoRows:
        assert self.release.wait(10), "the test never released the read"
        return super().execute()


def test_callers_that_find_the_answer_expired_together_wait_for_one_read() -> None:
    # A tenant's open streams and requests whose answer expired at once each took a pooled connection for the same
    # row (20 streams: 20 statements at once on the control pool).
    conn = _HeldRead()
    factory = _factory(conn)
    directory = TenantDirectory(ttl_s=3600)
    entra_id = uuid.uuid4()
    answers: list[Any] = []
    callers = [threading.Thread(target=lambda: answers.append(directory.resolve(factory, entra_id))) for _ in range(8)]
    for caller in callers:
        caller.start()
    for _ in range(500):  # the first caller is reading; the others are waiting for it
        if conn.taken:
            break
        threading.Event().wait(0.01)
    conn.release.set()
    for caller in callers:
        caller.join(10)
    assert answers == [None] * 8
    assert (conn.taken, conn.lookups) == (1, 1)


def test_an_answer_read_across_a_clearing_of_the_cache_is_not_kept() -> None:
    # The control plane clears the cache when a tenant changes (a suspension): an answer read before it must not be
    # kept as fresh after it.
    conn = _NoRows()
    directory = TenantDirectory(ttl_s=3600)
    entra_id = uuid.uuid4()
    factory = _factory(conn, after=directory.forget)  # the change commits while this read is out
    assert directory.resolve(factory, entra_id) is None
    assert directory.cached(entra_id) == (False, None)


class _FailingRead(_HeldRead):
    def execute(self, *_: Any) -> _NoRows:
        assert self.release.wait(10), "the test never released the read"
        self.lookups += 1
        raise TimeoutError("the pool had no connection")


def test_callers_waiting_for_a_read_that_fails_share_its_failure() -> None:
    # Each waiter read again in turn after a failed read: with the pool exhausted the k-th waited k reads.
    conn = _FailingRead()
    factory = _factory(conn)
    directory = TenantDirectory(ttl_s=3600)
    entra_id = uuid.uuid4()
    failures: list[BaseException] = []

    def call() -> None:
        try:
            directory.resolve(factory, entra_id)
        except TimeoutError as exc:
            failures.append(exc)

    callers = [threading.Thread(target=call) for _ in range(6)]
    for caller in callers:
        caller.start()
    for _ in range(1000):  # until one reads and the five others wait for its outcome
        read = directory._reading.get(entra_id)
        if conn.taken and read is not None and len(read.done._cond._waiters) == 5:  # type: ignore[attr-defined]
            break
        threading.Event().wait(0.01)
    conn.release.set()
    for caller in callers:
        caller.join(10)
    assert len(failures) == 6
    assert conn.lookups == 1
    assert directory._reading == {}


def test_a_caller_after_a_clearing_of_the_cache_does_not_join_a_read_begun_before_it() -> None:
    # A suspension clears the cache: a request after it joined the read begun before it, and was answered with the
    # tenant as it was.
    conn = _HeldRead()
    directory = TenantDirectory(ttl_s=3600)
    entra_id = uuid.uuid4()
    factory = _factory(conn)
    first = threading.Thread(target=lambda: directory.resolve(factory, entra_id))
    first.start()
    for _ in range(1000):
        if conn.taken:
            break
        threading.Event().wait(0.01)
    directory.forget()
    late = threading.Thread(target=lambda: directory.resolve(factory, entra_id))
    late.start()
    for _ in range(1000):
        if conn.taken == 2:
            break
        threading.Event().wait(0.01)
    conn.release.set()
    first.join(10)
    late.join(10)
    assert conn.taken == 2  # the late caller read for itself
