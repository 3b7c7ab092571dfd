# intent_ref: platform.database
"""The process-wide psycopg connection pool, configured from settings."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from shared.config import Settings, get_settings

_ENTRA_POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
_lock = threading.Lock()
_pool: ConnectionPool[psycopg.Connection[DictRow]] | None = None


def _connection_kwargs(settings: Settings) -> dict[str, Any] | Any:
    base: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
    if not settings.QP_DATABASE_ENTRA_AUTH:
        return base
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()

    def with_token() -> dict[str, Any]:
        # Entra tokens expire; each new physical connection asks for a fresh one (the SDK caches it).
        return {**base, "password": credential.get_token(_ENTRA_POSTGRES_SCOPE).token}

    return with_token


def build_pool(conninfo: str, settings: Settings, *, min_size: int = 1) -> ConnectionPool[Any]:
    """A new, opened pool whose connections are autocommit with dict rows."""
    pool: ConnectionPool[Any] = ConnectionPool(
        conninfo,
        kwargs=_connection_kwargs(settings),
        min_size=min_size,
        max_size=settings.QP_DATABASE_POOL_MAX,
        # No reset callback: with one, every return goes through the pool's worker thread and costs a round
        # trip. The session reset travels with each transaction's BEGIN instead (shared/db/session.py), and the
        # pool itself rolls back a connection returned inside a transaction.
        name="quantum",
        open=True,
    )
    return pool


def get_pool() -> ConnectionPool[psycopg.Connection[DictRow]]:
    """The shared pool, opened on first use."""
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                settings = get_settings()
                _pool = build_pool(settings.QP_DATABASE_URL, settings)
    return _pool


def close_pool() -> None:
    """Close the shared pool (tests and host shutdown)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.close()
            _pool = None
