# intent_ref: platform.database
"""Apply plain `NNNN_name.sql` migrations in order, once, under a lock of the tracking table, refusing edited files.

A file runs in one transaction with its tracking row, unless its header (its leading comment lines) holds the line
`-- migrate: no-transaction`: then its statements run one by one in autocommit (`CREATE INDEX CONCURRENTLY` cannot run
in a transaction), each ending with a `;` that ends its line, and its tracking row is written once all of them have
succeeded. Such a file may be run again from its start after a failure, so each statement must be safe to repeat.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

APP_MIGRATIONS = Path(__file__).with_name("migrations")
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
NO_TRANSACTION = "no-transaction"
"""The header directive (`-- migrate: no-transaction`) of a file whose statements run outside a transaction."""
_DIRECTIVE = re.compile(r"^--\s*migrate:\s*(?P<value>.*?)\s*$")
_NAME = r"[a-z_][a-z0-9_]*"
_CONCURRENT_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(?P<name>{_NAME})\s+ON\s+(?:ONLY\s+)?"
    rf"(?P<table>{_NAME}(?:\.{_NAME})?)[\s(]",
    re.IGNORECASE,
)
_DROP_CONCURRENTLY = re.compile(r"^DROP\s+INDEX\s+CONCURRENTLY\s+IF\s+EXISTS\s", re.IGNORECASE)
_ANY_CONCURRENTLY = re.compile(r"^(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX)\s+CONCURRENTLY\b", re.IGNORECASE)
_REFUSED_OUTSIDE_TRANSACTION = frozenset(
    {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "PREPARE", "SET", "RESET"}
)


class MigrationError(RuntimeError):
    """A migration set cannot be applied safely (edited, missing or malformed file)."""


@dataclass(frozen=True)
class Migration:
    """One migration file on disk."""

    version: int
    name: str
    path: Path
    checksum: str
    statements: tuple[str, ...] = ()
    """The statements of a no-transaction file, in the file's order; empty for a file run in one transaction."""

    @property
    def transactional(self) -> bool:
        return not self.statements

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
        text = path.read_text(encoding="utf-8")
        statements = _statements(path.name, text) if _runs_outside_transaction(path.name, text) else ()
        found[version] = Migration(version, match.group(2), path, checksum, statements)
    return [found[v] for v in sorted(found)]


def _runs_outside_transaction(file_name: str, text: str) -> bool:
    """Whether the file's header holds `-- migrate: no-transaction`; another directive, or one past the header (the
    leading lines that are blank or comments), is refused rather than ignored."""
    in_header, found = True, False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            in_header = False
        directive = _DIRECTIVE.match(stripped)
        if directive is None:
            continue
        if directive.group("value") != NO_TRANSACTION:
            raise MigrationError(
                f"{file_name}: unknown directive {stripped!r}; the one known is -- migrate: {NO_TRANSACTION}"
            )
        if not in_header:
            raise MigrationError(
                f"{file_name}: -- migrate: {NO_TRANSACTION} belongs in the file's leading comment lines"
            )
        found = True
    return found


def _statements(file_name: str, text: str) -> tuple[str, ...]:
    """A no-transaction file's statements. Kept to a shape split without parsing SQL: a statement ends with a `;` that
    ends its line; comments are whole lines of `--`; no `;` elsewhere, no `/*` and no `$` (so no string, comment or
    body can hide a `;`). Transaction control and SET/RESET are refused (each statement is its own transaction on the
    runner's connection, which later files reuse), and a concurrent index statement must be safe to repeat (IF NOT
    EXISTS / IF EXISTS): after a failure the file runs again from its first statement."""
    statements: list[str] = []
    lines: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.rstrip()
        if not code.strip() or code.lstrip().startswith("--"):
            continue
        if ";" in code[:-1] or "--" in code or "/*" in code or "$" in code:
            raise MigrationError(
                f"{file_name}:{number}: a no-transaction file has `;` only at the end of a line, and no `--` after "
                "code, `/*` or `$`"
            )
        lines.append(code)
        if code.endswith(";"):
            statements.append("\n".join(lines).strip())
            lines = []
    if lines:
        raise MigrationError(f"{file_name}: its last statement does not end with `;` at the end of a line")
    if not statements:
        raise MigrationError(f"{file_name}: a no-transaction file holds no statement")
    for statement in statements:
        keyword = statement.split(None, 1)[0].rstrip(";").upper()
        if keyword in _REFUSED_OUTSIDE_TRANSACTION:
            raise MigrationError(f"{file_name}: {keyword} has no place in a no-transaction file")
        if _ANY_CONCURRENTLY.match(statement) and not (
            _CONCURRENT_INDEX.match(statement) or _DROP_CONCURRENTLY.match(statement)
        ):
            raise MigrationError(
                f"{file_name}: a concurrent index statement is CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS "
                "name ON table, or DROP INDEX CONCURRENTLY IF EXISTS (it may run again after a failure)"
            )
    return tuple(statements)


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
    Each file runs in its own transaction together with its tracking row, a no-transaction file statement by statement
    (its tracking row once every statement succeeded), under the same lock.
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
    file may set its own bound (`SET LOCAL lock_timeout`), which then holds for it. A no-transaction file goes to
    `_apply_outside_transaction`."""
    if not migration.transactional:
        _apply_outside_transaction(conn, migration, table)
        return

    def attempt() -> None:
        with conn.transaction():
            conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (f"{LOCK_TIMEOUT_MS}ms",))
            conn.execute(migration.sql_text.encode())  # a trusted file of the repository, not user input
            _record(conn, migration, table)

    _retrying_lock_waits(migration, attempt)


def _record(conn: psycopg.Connection[Any], migration: Migration, table: sql.Identifier) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(table),
        (migration.version, migration.name, migration.checksum),
    )


def _retrying_lock_waits(migration: Migration, attempt: Callable[[], None]) -> None:
    """Run `attempt` until it is not given up on a lock wait, LOCK_RETRY_S apart, at most LOCK_ATTEMPTS times."""
    for number in range(1, LOCK_ATTEMPTS + 1):
        try:
            attempt()
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            if number == LOCK_ATTEMPTS:
                raise MigrationError(
                    f"{migration.path.name}: its locks were held elsewhere through {number} attempts; run again"
                ) from exc
            logger.info(
                "migration %s waits for locks held elsewhere (attempt %d): %s", migration.path.name, number, exc
            )
            time.sleep(LOCK_RETRY_S)


CONCURRENT_LOCK_TIMEOUT_MS = 600_000
"""How long a concurrent index statement (CREATE or DROP INDEX CONCURRENTLY) of a no-transaction file waits for one
lock: the table's SHARE UPDATE EXCLUSIVE, then the transactions that began before each of its phases. Unlike an ALTER's
wait, none holds up the table's reads or writes (only other schema changes and vacuums of it), and given up after the
build it throws the build away, so it waits long; given up, the run fails once (no retry) and is run again."""
CLIENT_CHECK_INTERVAL = "1s"
"""How often the server checks, during a no-transaction statement, that the runner is still there: a runner killed
mid-build ends its build, leaving an INVALID index the next run drops and builds again."""


def _apply_outside_transaction(conn: psycopg.Connection[Any], migration: Migration, table: sql.Identifier) -> None:
    """The statements of a no-transaction file one by one in autocommit, then its tracking row. A failure leaves the
    statements done so far in place, unrecorded: the next run runs the file again from its start."""
    conn.execute(
        "SELECT pg_catalog.set_config('client_connection_check_interval', %s, false)", (CLIENT_CHECK_INTERVAL,)
    )
    try:
        for statement in migration.statements:
            if _ANY_CONCURRENTLY.match(statement):
                _run_concurrently(conn, migration, statement)
            else:

                def attempt(statement: str = statement) -> None:
                    conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", (f"{LOCK_TIMEOUT_MS}ms",))
                    conn.execute(statement.encode())  # a trusted file of the repository, not user input

                _retrying_lock_waits(migration, attempt)
        _record(conn, migration, table)
    finally:
        if not conn.broken and not conn.closed:
            conn.execute("RESET lock_timeout")
            conn.execute("RESET client_connection_check_interval")


def _run_concurrently(conn: psycopg.Connection[Any], migration: Migration, statement: str) -> None:
    """A CREATE or DROP INDEX CONCURRENTLY; an INVALID index of the same name on the table (a build that failed or was
    killed: IF NOT EXISTS would keep it as it is) is dropped first."""
    conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", (f"{CONCURRENT_LOCK_TIMEOUT_MS}ms",))
    try:
        index = _CONCURRENT_INDEX.match(statement)
        if index is not None:
            _drop_invalid_index(conn, migration, index.group("name").lower(), index.group("table").lower())
        conn.execute(statement.encode())  # a trusted file of the repository, not user input
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
        raise MigrationError(
            f"{migration.path.name}: a concurrent index statement waited over {CONCURRENT_LOCK_TIMEOUT_MS} ms for a "
            "lock; run again (an index left INVALID is dropped and built again)"
        ) from exc


def _drop_invalid_index(conn: psycopg.Connection[Any], migration: Migration, name: str, table: str) -> None:
    row = conn.execute(
        "SELECT n.nspname, i.indrelid = t.oid, i.indisvalid"
        " FROM pg_catalog.pg_class t"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = t.relnamespace AND c.relname = %s"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid"
        " WHERE t.oid = pg_catalog.to_regclass(%s)",
        (name, table),
    ).fetchone()
    if row is None:
        return  # none yet (or no such table, which the statement then reports)
    if row[1] is not True:
        raise MigrationError(f"{migration.path.name}: {row[0]}.{name} exists and is not an index of {table}")
    if row[2]:
        return  # built: IF NOT EXISTS keeps it
    logger.warning(
        "migration %s: dropping the INVALID index %s.%s a failed build left", migration.path.name, row[0], name
    )
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(row[0], name)))


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
