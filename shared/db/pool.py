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


def _reset(conn: psycopg.Connection[Any]) -> None:
    # A connection must come back with no open transaction and no session state; RESET ALL is
    # cheap insurance against a plain SET (or SET ROLE) leaking to the next borrower.
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise psycopg.InterfaceError("connection returned to the pool inside a transaction")
    conn.execute("RESET ALL; RESET ROLE")  # one round trip: this runs on every return to the pool


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
        reset=_reset,
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
