# intent_ref: platform.database
"""The process-wide psycopg connection pools, configured from settings: tenant requests and the control plane."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from shared.config import Settings, get_settings
from shared.db import json_values
from shared.db.availability import Breaker, GuardedPool

json_values.install()

_ENTRA_POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
CONTROL_POOL_MAX = 4
"""The control plane runs few transactions (cached tenant lookups, admin requests, timers): a small pool suffices."""

_lock = threading.Lock()
_pools: dict[str, ConnectionPool[Any]] = {}
"""The process-wide pools by login ("app", "control"), each opened on first use."""


def _token_credential(client_id: str | None) -> Any:
    """The credential whose token is the password: the control identity's, or DefaultAzureCredential's."""
    if client_id is None:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()  # the runtime identity, named by AZURE_CLIENT_ID
    from azure.identity import ManagedIdentityCredential

    # The control login exists only as this managed identity: no other credential could answer for it.
    return ManagedIdentityCredential(client_id=client_id)


KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
"""TCP keepalives and a bound on unacknowledged sends (libpq's connection parameters; ignored on a Unix socket): a
connection whose server or route went away without a word is found dead within about 25 s idle (10 s, then 3 probes
5 s apart), or 30 s after a send nobody acknowledges, instead of the kernel's hours. The statement timeout is the
server's and reaches no such connection, and a thread waiting on it (a claim's renewal, ADR 0048) waited for good."""


def _connection_kwargs(settings: Settings, client_id: str | None = None) -> dict[str, Any] | Any:
    base: dict[str, Any] = {
        "autocommit": True,
        "row_factory": dict_row,
        "connect_timeout": settings.QP_DATABASE_CONNECT_TIMEOUT_S,
        **KEEPALIVES,
    }
    if not settings.QP_DATABASE_ENTRA_AUTH:
        return base
    credential = _token_credential(client_id)

    def with_token() -> dict[str, Any]:
        # Entra tokens expire; each new physical connection asks for a fresh one (the SDK caches it).
        return {**base, "password": credential.get_token(_ENTRA_POSTGRES_SCOPE).token}

    return with_token


def _drop_notifications(conn: psycopg.Connection[Any]) -> None:
    # Nothing the app runs on a pooled connection listens; a LISTEN left by SQL in a tenant's transaction lasts until
    # the next transaction's reset has committed (shared/db/session.py). Without a handler psycopg would keep every
    # notification that reaches the connection meanwhile, of every tenant, unread for the connection's life.
    conn.add_notify_handler(_ignore)


def _ignore(_notification: psycopg.Notify) -> None:
    return None


def build_pool(
    conninfo: str,
    settings: Settings,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    client_id: str | None = None,
    name: str = "quantum",
) -> ConnectionPool[Any]:
    """A new, opened pool whose connections are autocommit with dict rows (`client_id`: whose token, in Azure)."""
    # Guarded: once a connection attempt has failed, requests are refused at once instead of each waiting.
    pool: ConnectionPool[Any] = GuardedPool(
        conninfo,
        breaker=Breaker(name, probe_s=settings.QP_DATABASE_POOL_TIMEOUT_S + 1.0),
        kwargs=_connection_kwargs(settings, client_id),
        min_size=min_size,
        max_size=max_size or settings.QP_DATABASE_POOL_MAX,
        # A request that cannot get a connection soon is answered 503 with Retry-After, not held for 30 s.
        timeout=settings.QP_DATABASE_POOL_TIMEOUT_S,
        # No reset callback: with one, every return goes through the pool's worker thread and costs a round
        # trip. The session reset travels with each transaction's BEGIN instead (shared/db/session.py), and the
        # pool itself rolls back a connection returned inside a transaction.
        configure=_drop_notifications,
        name=name,
        open=True,
    )
    return pool


def build_control_pool(conninfo: str, settings: Settings, *, min_size: int = 1) -> ConnectionPool[Any]:
    """A new, opened pool of the control plane's login (small; in Azure with the control identity's token)."""
    return build_pool(
        conninfo,
        settings,
        min_size=min_size,
        max_size=CONTROL_POOL_MAX,
        client_id=settings.QP_DATABASE_CONTROL_CLIENT_ID,
        name="quantum-control",
    )


Pool = ConnectionPool[psycopg.Connection[DictRow]]


def _shared(login: str, build: Callable[[Settings], Pool]) -> Pool:
    pool = _pools.get(login)
    if pool is None:
        with _lock:
            pool = _pools.get(login)
            if pool is None:
                pool = _pools[login] = build(get_settings())
    return pool


def get_pool() -> ConnectionPool[psycopg.Connection[DictRow]]:
    """The shared pool of tenant requests (the runtime login), opened on first use."""
    return _shared("app", lambda settings: build_pool(settings.QP_DATABASE_URL, settings))


def get_control_pool() -> ConnectionPool[psycopg.Connection[DictRow]]:
    """The shared pool of the control plane (its own login), opened on first use."""
    return _shared("control", lambda settings: build_control_pool(settings.QP_DATABASE_CONTROL_URL, settings))


def pool_usage() -> list[tuple[str, int, int]]:
    """Each shared pool's name, connections in use and maximum size (for the pool saturation gauge)."""
    with _lock:
        pools = list(_pools.values())
    usage = []
    for pool in pools:
        stats = pool.get_stats()
        in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        usage.append((pool.name, in_use, pool.max_size))
    return usage


def close_pool() -> None:
    """Close both shared pools (tests and host shutdown)."""
    with _lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
