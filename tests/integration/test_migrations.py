# intent_ref: platform.database
"""The migration runner: fresh apply, no-op re-run, edited files refused, concurrent runners serialised, files run
outside a transaction (concurrent index builds: recorded once done, an INVALID leftover built again, writes let by)."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from shared.db.bootstrap import OWNER_ROLE
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


NO_TRANSACTION = "-- intent_ref: platform.database\n-- migrate: no-transaction\n"


def _index_valid(conninfo: str, name: str) -> bool | None:
    """Whether index `name` is valid (None: there is none)."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)
        ).fetchone()
    return None if row is None else bool(row[0])


def _recorded(conninfo: str) -> list[tuple[int, str]]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT version, checksum FROM mig.schema_migrations ORDER BY version").fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def test_a_no_transaction_file_runs_its_statements_outside_a_transaction_once_and_is_recorded(
    scratch_db: str, tmp_path: Path
) -> None:
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int, kind text)")
        conn.execute("INSERT INTO events SELECT n, 'k' || n % 7 FROM generate_series(1, 1000) n")
    _write(tmp_path, "0001_first.sql", "CREATE TABLE t7 (id int);")
    _write(
        tmp_path,
        "0002_index.sql",
        NO_TRANSACTION + "-- Two builds, one statement each.\n\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_kind ON events (kind)\n    WHERE kind <> 'k0';\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_id ON events (id);\n",
    )
    # The settings the runner gave the file's statements are undone: the connection's next files run as before.
    _write(tmp_path, "0003_after.sql", "SELECT 1 / (current_setting('client_connection_check_interval') = '0')::int;")
    applied = ["0001_first.sql", "0002_index.sql", "0003_after.sql"]
    assert apply_migrations(scratch_db, tmp_path, schema="mig") == applied
    assert _index_valid(scratch_db, "events_kind") is True and _index_valid(scratch_db, "events_id") is True
    assert _recorded(scratch_db) == [(m.version, m.checksum) for m in discover(tmp_path)]
    assert apply_migrations(scratch_db, tmp_path, schema="mig") == []


def test_an_invalid_index_a_failed_concurrent_build_left_is_dropped_and_built_again(
    scratch_db: str, tmp_path: Path
) -> None:
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE keyed (id int, code text)")
        conn.execute("INSERT INTO keyed VALUES (1, 'a'), (2, 'b'), (3, 'a')")  # a duplicate: the build fails
    _write(
        tmp_path,
        "0001_unique.sql",
        NO_TRANSACTION + "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS keyed_code\n    ON keyed (code);\n",
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        apply_migrations(scratch_db, tmp_path, schema="mig")
    assert _index_valid(scratch_db, "keyed_code") is False  # the failed build's leftover
    assert _recorded(scratch_db) == []  # not recorded: the next run runs the file again
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("DELETE FROM keyed WHERE id = 3")
    # IF NOT EXISTS alone would keep the INVALID index (never used, never unique); it is dropped and built again.
    assert apply_migrations(scratch_db, tmp_path, schema="mig") == ["0001_unique.sql"]
    assert _index_valid(scratch_db, "keyed_code") is True
    with psycopg.connect(scratch_db, autocommit=True) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO keyed VALUES (4, 'b')")


def test_writes_to_the_table_go_on_while_a_no_transaction_file_builds_its_index(
    scratch_db: str, tmp_path: Path
) -> None:
    # A plain CREATE INDEX holds SHARE on its table for its whole build, queueing every write (a relay transaction
    # under way kept it waiting, and every write behind it): a concurrent build lets them by.
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE outbox (id int, published_at timestamptz)")
    _write(
        tmp_path,
        "0001_index.sql",
        NO_TRANSACTION + "CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_published\n"
        "    ON outbox (published_at) WHERE published_at IS NOT NULL;\n",
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            apply_migrations(scratch_db, tmp_path, schema="mig")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    with psycopg.connect(scratch_db) as relay, psycopg.connect(scratch_db, autocommit=True) as writer:
        relay.execute("INSERT INTO outbox VALUES (1, now())")  # a transaction under way that writes the table
        migration = threading.Thread(target=run)
        migration.start()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'"
        )
        with psycopg.connect(scratch_db, autocommit=True) as watcher:
            while watcher.execute(waiting).fetchone() == (0,):  # the build waits for the relay's transaction
                assert migration.is_alive(), errors
        writer.execute("SET lock_timeout = '200ms'")
        writer.execute("INSERT INTO outbox VALUES (2, NULL)")  # not queued behind the build
        assert migration.is_alive()  # the build still waits, not failed
        relay.commit()
        migration.join(timeout=60)
    assert errors == [] and not migration.is_alive()
    assert _index_valid(scratch_db, "outbox_published") is True
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (2,)


def test_a_transactional_file_after_a_no_transaction_one_is_still_all_or_nothing(
    scratch_db: str, tmp_path: Path
) -> None:
    _write(tmp_path, "0001_table.sql", "CREATE TABLE t8 (id int);")
    _write(tmp_path, "0002_index.sql", NO_TRANSACTION + "CREATE INDEX CONCURRENTLY IF NOT EXISTS t8_id ON t8 (id);\n")
    _write(tmp_path, "0003_broken.sql", "CREATE TABLE t9 (id int); SELECT no_such_function();")
    with pytest.raises(psycopg.errors.UndefinedFunction):
        apply_migrations(scratch_db, tmp_path, schema="mig")
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT to_regclass('t9')").fetchone() == (None,)
    assert [version for version, _ in _recorded(scratch_db)] == [1, 2]


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("SELECT 1; SELECT 2;\n", "only at the end of a line"),
        ("DO $$ BEGIN PERFORM 1; END $$;\n", "only at the end of a line"),
        ("SELECT 1 -- note;\n", "only at the end of a line"),
        ("SELECT 1\n", "does not end with"),
        ("SET lock_timeout = 0;\n", "SET has no place"),
        ("BEGIN;\n", "BEGIN has no place"),
        ("CREATE INDEX CONCURRENTLY t_id ON t (id);\n", "IF NOT EXISTS"),
        ("DROP INDEX CONCURRENTLY t_id;\n", "IF EXISTS"),
        ("-- nothing\n", "holds no statement"),
    ],
)
def test_a_no_transaction_file_of_another_shape_is_refused_before_anything_runs(
    tmp_path: Path, text: str, refusal: str
) -> None:
    _write(tmp_path, "0001_shape.sql", NO_TRANSACTION + text)
    with pytest.raises(MigrationError, match=refusal):
        discover(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "-- intent_ref: platform.database\nSELECT 1;\n-- migrate: no-transaction\nSELECT 2;\n",
        "-- intent_ref: platform.database\n-- migrate: no-transactions\nSELECT 1;\n",
    ],
)
def test_a_misplaced_or_unknown_directive_is_refused(tmp_path: Path, text: str) -> None:
    _write(tmp_path, "0001_directive.sql", text)
    with pytest.raises(MigrationError, match="directive|leading comment lines"):
        discover(tmp_path)


@pytest.fixture()
def owned_scratch_db(pg) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A throwaway database owned by the platform's owner role, as bootstrap makes the app's; its owner's URL."""
    name = f"mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(OWNER_ROLE)))
    yield psycopg.conninfo.make_conninfo(pg.owner_url, dbname=name)
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_app_migrations_apply_on_a_fresh_database_and_the_retention_works_before_its_indexes(
    owned_scratch_db: str,
    tmp_path: Path,
    pg,  # type: ignore[no-untyped-def]
) -> None:
    # Migration 0073's retention functions ran before 0076 builds their indexes (a deploy applies 0073 first, and
    # 0076's builds may fail and be run again): they are right without them, only slower.
    before = [m for m in discover(APP_MIGRATIONS) if m.version < 76]
    for migration in before:
        shutil.copy(migration.path, tmp_path / migration.path.name)
    assert len(apply_migrations(owned_scratch_db, tmp_path)) == len(before)
    assert _index_valid(owned_scratch_db, "app.outbox_published") is None
    tenant = uuid.uuid4()
    admin_url = psycopg.conninfo.make_conninfo(
        pg.admin_url, dbname=psycopg.conninfo.conninfo_to_dict(owned_scratch_db)["dbname"]
    )
    with psycopg.connect(admin_url, autocommit=True) as admin:  # seeds past the row-level security
        admin.execute(
            "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, 'retained', %s)", (tenant, uuid.uuid4())
        )
        admin.execute(
            "INSERT INTO app.outbox (tenant_id, event_type, subject, data, occurred_at, published_at)"
            " SELECT %s, 'intent.created', 's' || n, '{}', now() - interval '9 days',"
            " CASE WHEN n <= 3 THEN now() - interval '8 days' END FROM generate_series(1, 5) n",
            (tenant,),
        )
    with psycopg.connect(owned_scratch_db, autocommit=True) as owner:  # the functions' owner, as they run
        assert owner.execute("SELECT app.retention_due_tenants(10)").fetchall() == [(tenant,)]
        with owner.transaction():
            owner.execute("SELECT app.pin_tenant(%s)", (tenant,))
            assert owner.execute("SELECT app.delete_published_outbox_events(2)").fetchone() == (2,)
    # Then the whole chain's last files: the indexes, built concurrently and valid.
    applied = apply_migrations(owned_scratch_db)
    assert applied == [m.path.name for m in discover(APP_MIGRATIONS) if m.version >= 76]
    assert _index_valid(owned_scratch_db, "app.outbox_published") is True
    assert _index_valid(owned_scratch_db, "app.webhook_deliveries_delivered") is True
    with psycopg.connect(owned_scratch_db, autocommit=True) as owner:
        assert owner.execute("SELECT app.retention_due_tenants(10)").fetchall() == [(tenant,)]
        with owner.transaction():
            owner.execute("SELECT app.pin_tenant(%s)", (tenant,))
            assert owner.execute("SELECT app.delete_published_outbox_events(10)").fetchone() == (1,)
    assert apply_migrations(owned_scratch_db) == []
