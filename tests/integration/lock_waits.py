# intent_ref: platform.tenants
"""Watching Postgres for a session that waits on a lock: how a race test knows its writer reached the wait."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg


def waits_on_a_lock(admin_url: str, user: str, statement: str) -> bool:
    """Whether a session of `user` waits on a lock in a statement that starts with `statement`."""
    with psycopg.connect(admin_url, dbname="quantum") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = %s AND query LIKE %s",
            (user, f"{statement}%"),
        ).fetchone()
    return bool(row and row[0])


def until_done_or_waiting(admin_url: str, done: Callable[[], bool], user: str, statement: str) -> None:
    """Until `done`, or `user` waits on a lock in a statement that starts with `statement` (60 s at most)."""
    deadline = time.monotonic() + 60
    while not done() and not waits_on_a_lock(admin_url, user, statement):
        assert time.monotonic() < deadline, "neither finished nor waited on a lock"
        time.sleep(0.05)
