# intent_ref: platform.database
"""Apply plain `NNNN_name.sql` migrations in order, once, under a lock of the tracking table, refusing edited files."""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

APP_MIGRATIONS = Path(__file__).with_name("migrations")
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration set cannot be applied safely (edited, missing or malformed file)."""


@dataclass(frozen=True)
class Migration:
    """One migration file on disk."""

    version: int
    name: str
    path: Path
    checksum: str

    @property
    def sql_text(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover(directory: Path) -> list[Migration]:
    """The migrations in `directory`, ordered by version; malformed names or duplicate versions fail."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        found[version] = Migration(version, match.group(2), path, checksum)
    return [found[v] for v in sorted(found)]


def _create_table(conn: psycopg.Connection[Any], schema: str, table: sql.Identifier) -> None:
    """Create the schema and its tracking table unless they exist (a concurrent first run may create them too)."""
    statements = (
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(table),
    )
    for attempt in (1, 2):
        try:
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement)
            return
        except psycopg.errors.UniqueViolation:
            # IF NOT EXISTS misses a creation that commits while this one runs: the other runner's; it exists now.
            if attempt == 2:
                raise


@contextmanager
def _exclusive_run(conninfo: str, table: sql.Identifier) -> Iterator[None]:
    """Hold, on a connection of its own, a lock of the tracking table that one runner at a time can hold.

    Not an advisory lock: their keys are one namespace open to every session, so SQL in a tenant's transaction could
    take the runner's key at session level on a pooled connection and hold up every deploy. Locking a table needs a
    privilege on it, and the runtime and control logins have none on this one. SHARE UPDATE EXCLUSIVE conflicts with
    itself and not with the reads and inserts of the runner's own connection, whose transactions commit meanwhile.
    """
    with psycopg.connect(conninfo, autocommit=True) as guard:
        # Idle in its transaction for the whole run: a server-wide timeout must not end it midway.
        guard.execute("SET idle_in_transaction_session_timeout = 0")
        with guard.transaction():
            guard.execute(sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(table))
            yield


def apply_migrations(conninfo: str, directory: Path = APP_MIGRATIONS, *, schema: str = "app") -> list[str]:
    """Apply pending migrations of `directory`, tracked in `<schema>.schema_migrations`; return applied names.

    A lock of the tracking table serialises concurrent runners: the second waits, then finds nothing to do.
    Each file runs in its own transaction together with its tracking row.
    """
    migrations = discover(directory)
    table = sql.Identifier(schema, "schema_migrations")
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _create_table(conn, schema, table)
        with _exclusive_run(conninfo, table):
            rows = conn.execute(sql.SQL("SELECT version, name, checksum FROM {}").format(table)).fetchall()
            applied = {int(r[0]): (str(r[1]), str(r[2])) for r in rows}
            on_disk = {m.version for m in migrations}
            missing = sorted(set(applied) - on_disk)
            if missing:
                raise MigrationError(f"applied migrations missing on disk: {missing}")
            for migration in migrations:
                if migration.version in applied:
                    _, checksum = applied[migration.version]
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"{migration.path.name} was edited after it was applied (checksum differs); "
                            "add a new migration instead"
                        )
                    continue
                _apply_one(conn, migration, table)
                applied_now.append(migration.path.name)
                logger.info("applied migration %s", migration.path.name)
    return applied_now


LOCK_TIMEOUT_MS = 2_000
"""How long one attempt of a migration waits for a lock. A statement waiting for a table's lock queues every later
one on that table behind it: an ALTER that waited on a long transaction (an export holding its tenant's row for
minutes) stalled every request reading the table until then. Given up, the attempt lets them by, and runs again."""
LOCK_ATTEMPTS = 60
"""Attempts of one migration whose locks are held elsewhere, LOCK_RETRY_S apart, before the run fails (then safely
run again: nothing of the failed file was applied)."""
LOCK_RETRY_S = 1.0


def _apply_one(conn: psycopg.Connection[Any], migration: Migration, table: sql.Identifier) -> None:
    """`migration` and its tracking row in one transaction, each attempt's lock waits bounded (LOCK_TIMEOUT_MS); a
    file may set its own bound (`SET LOCAL lock_timeout`), which then holds for it."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (f"{LOCK_TIMEOUT_MS}ms",))
                conn.execute(migration.sql_text.encode())  # a trusted file of the repository, not user input
                conn.execute(
                    sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(table),
                    (migration.version, migration.name, migration.checksum),
                )
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            if attempt == LOCK_ATTEMPTS:
                raise MigrationError(
                    f"{migration.path.name}: its locks were held elsewhere through {attempt} attempts; run again"
                ) from exc
            logger.info(
                "migration %s waits for locks held elsewhere (attempt %d): %s", migration.path.name, attempt, exc
            )
            time.sleep(LOCK_RETRY_S)


def main() -> None:
    """`python -m shared.db.migrate`: apply the app's migrations with the owner connection."""
    from shared.config import get_settings

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--database-url", help="owner connection; default QP_DATABASE_OWNER_URL")
    args = parser.parse_args()
    conninfo = args.database_url or get_settings().QP_DATABASE_OWNER_URL
    if not conninfo:
        raise SystemExit("QP_DATABASE_OWNER_URL is not set and --database-url was not given")
    logging.basicConfig(level=logging.INFO)
    applied = apply_migrations(conninfo)
    logger.info("%d migration(s) applied", len(applied))


if __name__ == "__main__":
    main()
