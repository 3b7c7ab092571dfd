# intent_ref: platform.database
"""The migration runner: fresh apply, no-op re-run, edited files refused, concurrent runners serialised."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from shared.db.migrate import APP_MIGRATIONS, MigrationError, apply_migrations, discover

pytestmark = pytest.mark.integration


@pytest.fixture()
def scratch_db(pg) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A throwaway database on the session's server, owned by the admin."""
    name = f"mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield psycopg.conninfo.make_conninfo(pg.admin_url, dbname=name)
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text, encoding="utf-8")


def test_fresh_apply_then_rerun_is_a_no_op(scratch_db: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_first.sql", "CREATE TABLE t1 (id int);")
    _write(tmp_path, "0002_second.sql", "INSERT INTO t1 VALUES (1);")
    assert apply_migrations(scratch_db, tmp_path, schema="mig") == ["0001_first.sql", "0002_second.sql"]
    assert apply_migrations(scratch_db, tmp_path, schema="mig") == []
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT count(*) FROM t1").fetchone() == (1,)
        versions = conn.execute("SELECT version FROM mig.schema_migrations ORDER BY version").fetchall()
    assert versions == [(1,), (2,)]


def test_new_file_is_applied_on_the_next_run(scratch_db: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_first.sql", "CREATE TABLE t2 (id int);")
    apply_migrations(scratch_db, tmp_path, schema="mig")
    _write(tmp_path, "0002_more.sql", "ALTER TABLE t2 ADD COLUMN name text;")
    assert apply_migrations(scratch_db, tmp_path, schema="mig") == ["0002_more.sql"]


def test_edited_applied_file_is_refused(scratch_db: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_first.sql", "CREATE TABLE t3 (id int);")
    apply_migrations(scratch_db, tmp_path, schema="mig")
    _write(tmp_path, "0001_first.sql", "CREATE TABLE t3 (id bigint);")
    with pytest.raises(MigrationError, match="0001_first.sql was edited"):
        apply_migrations(scratch_db, tmp_path, schema="mig")


def test_failed_file_leaves_nothing_behind(scratch_db: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_ok.sql", "CREATE TABLE t4 (id int);")
    _write(tmp_path, "0002_broken.sql", "CREATE TABLE t5 (id int); SELECT no_such_function();")
    with pytest.raises(psycopg.errors.UndefinedFunction):
        apply_migrations(scratch_db, tmp_path, schema="mig")
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT to_regclass('t5')").fetchone() == (None,)
        assert conn.execute("SELECT max(version) FROM mig.schema_migrations").fetchone() == (1,)


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "1_bad.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_snake_name.sql"):
        discover(tmp_path)


def test_two_concurrent_runners_apply_each_file_once(scratch_db: str, tmp_path: Path) -> None:
    # The first file holds the lock long enough that the second runner must wait for it.
    _write(tmp_path, "0001_slow.sql", "CREATE TABLE t6 (id int); SELECT pg_sleep(0.5);")
    _write(tmp_path, "0002_insert.sql", "INSERT INTO t6 VALUES (1);")
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(apply_migrations(scratch_db, tmp_path, schema="mig"))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(results, key=len) == [[], ["0001_slow.sql", "0002_insert.sql"]]
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT count(*) FROM t6").fetchone() == (1,)


def test_app_migrations_are_well_formed() -> None:
    names = [m.path.name for m in discover(APP_MIGRATIONS)]
    assert names[0] == "0001_app_schema.sql"
    assert [m.version for m in discover(APP_MIGRATIONS)] == list(range(1, len(names) + 1))


def test_a_migration_waiting_for_a_lock_lets_other_readers_of_the_table_by_and_applies_later(
    scratch_db: str, tmp_path: Path
) -> None:
    # An ALTER waiting for a long transaction's lock queued every later reader of the table behind it until that
    # transaction ended (an export holds its tenant's row for minutes): the whole platform stalled on a deploy.
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE busy (id int)")
    _write(tmp_path, "0001_alter_busy.sql", "ALTER TABLE busy ADD COLUMN note text;")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            apply_migrations(scratch_db, tmp_path, schema="mig")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    with psycopg.connect(scratch_db) as holder, psycopg.connect(scratch_db, autocommit=True) as reader:
        holder.execute("SELECT * FROM busy")  # its transaction stays open, holding the table's ACCESS SHARE lock
        migration = threading.Thread(target=run)
        migration.start()
        until = "SELECT count(*) FROM pg_locks WHERE relation = 'busy'::regclass AND NOT granted"
        with psycopg.connect(scratch_db, autocommit=True) as watcher:
            while watcher.execute(until).fetchone() == (0,):  # the ALTER waits for its lock
                assert migration.is_alive(), errors
        # A reader arriving behind the waiting ALTER: the ALTER gives up its place and the read goes through (before,
        # it waited behind the ALTER until the holder ended, far past this bound).
        reader.execute("SET lock_timeout = '20s'")
        assert reader.execute("SELECT count(*) FROM busy").fetchone() == (0,)
        assert migration.is_alive()  # still waiting to apply, not failed
        holder.rollback()  # the long transaction ends
        migration.join(timeout=60)
    assert errors == [] and not migration.is_alive()
    with psycopg.connect(scratch_db) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'busy'"
        ).fetchall()
        assert sorted(columns) == [("id",), ("note",)]
