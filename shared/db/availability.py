# intent_ref: platform.database
"""Fail fast while the database is known to be down: a small circuit breaker in front of each connection pool."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

logger = logging.getLogger(__name__)

COOLDOWN_S = 1.5
"""After a failed connection attempt, requests are refused at once for this long (then one request probes)."""
RECONNECT_TIMEOUT_S = 5.0
"""How long the pool retries one lost connection, backing off, before it gives up and lets demand open a new one.

The pool's backoff doubles without bound (up to its default five minutes in all): after a long outage a
connection would come back only at its next distant attempt, long after the database itself.
"""


class DatabaseUnavailable(PoolTimeout):
    """Refused without trying: the database refused a connection moments ago.

    A PoolTimeout, so that whatever already treats "no connection in time" as retryable treats this alike.
    """


class Breaker:
    """Open while the last connection attempt failed; one request at a time probes after each cooldown.

    The signal is the outcome of opening a connection, not of requests: a request failing on a connection the
    server dropped says nothing about the next one, and a pool exhausted by busy requests is not an outage.
    """

    def __init__(
        self,
        name: str,
        *,
        cooldown_s: float = COOLDOWN_S,
        probe_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._cooldown_s = cooldown_s
        self._probe_s = probe_s
        self._clock = clock
        self._lock = threading.Lock()
        self._down = False
        self._refuse_until = 0.0

    @property
    def down(self) -> bool:
        """Whether the last connection attempt failed."""
        return self._down

    def admit(self) -> None:
        """Raise DatabaseUnavailable when the database is known down and this request is not the probe."""
        if not self._down:  # the common case, without the lock
            return
        with self._lock:
            if not self._down:
                return
            now = self._clock()
            if now < self._refuse_until:
                raise DatabaseUnavailable(f"the database behind pool {self.name!r} is unavailable")
            # This request probes; the others keep failing fast until it succeeds or fails (or overstays).
            self._refuse_until = now + self._probe_s

    def failed(self, exc: BaseException) -> None:
        """A connection attempt failed, or a probe found no connection: refuse requests for a cooldown."""
        with self._lock:
            if not self._down:
                logger.warning("database behind pool %r is unavailable, failing fast: %s", self.name, exc)
            self._down = True
            self._refuse_until = self._clock() + self._cooldown_s

    def succeeded(self) -> None:
        """A connection was opened: serve normally again."""
        if not self._down:
            return
        with self._lock:
            if self._down:
                logger.warning("database behind pool %r is reachable again", self.name)
            self._down = False
            self._refuse_until = 0.0


def watched_connection_class(breaker: Breaker) -> type[psycopg.Connection[Any]]:
    """A connection class whose every connect attempt, by the pool's workers or by a request, informs `breaker`."""

    class WatchedConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as exc:
                breaker.failed(exc)
                raise
            breaker.succeeded()
            return conn

    return WatchedConnection


class GuardedPool(ConnectionPool[Any]):
    """A ConnectionPool that refuses at once while its breaker is open instead of waiting out its timeout."""

    def __init__(self, conninfo: str, *, breaker: Breaker, **kwargs: Any) -> None:
        self.breaker = breaker
        kwargs.setdefault("reconnect_timeout", RECONNECT_TIMEOUT_S)
        super().__init__(conninfo, connection_class=watched_connection_class(breaker), **kwargs)

    def getconn(self, timeout: float | None = None) -> Any:
        """As ConnectionPool.getconn, but DatabaseUnavailable at once while the database is known down."""
        self.breaker.admit()
        try:
            return super().getconn(timeout)
        except PoolTimeout as exc:
            # Only while already down: a timeout of a healthy but busy pool is overload, handled elsewhere.
            if self.breaker.down:
                self.breaker.failed(exc)
            raise
