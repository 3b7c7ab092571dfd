# intent_ref: platform.tenant-isolation
"""The request path's transactions in isolation: each shape's wall time, client CPU and server CPU per call.

    .venv/bin/python -m bench.transactions [--calls 2000]

Starts an embedded Postgres in a temporary folder (roles and migrations as the app has them), provisions one
tenant and times, on one pool of the app's login, the shapes a request runs: the rate-limit take and an audit
record as separate statements (the former code, with the pool's per-return reset) and as one round trip (the
current code), the take with and without asynchronous commit and without the per-transaction session reset, and a
tenant transaction's read with its prologue pipelined statement by statement (the former code) and sent as one
simple query (the current code), and an empty transaction with and without the tenant pin (what the pin itself
costs). Writes bench/results/transactions-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from bench.request_path import RESULTS, _cpu_ms, _postgres_pids
from devhost.services import start_postgres, stop_postgres
from shared.audit import AuditRecord
from shared.audit.postgres import PostgresAuditStore
from shared.config import Settings
from shared.db import session
from shared.db.bootstrap import bootstrap
from shared.db.migrate import apply_migrations
from shared.db.pool import build_pool
from shared.ratelimit import RateLimit, take_tenant_token

_TAKE = "SELECT allowed, retry_after_s FROM app.take_request_token(%s, %s)"
_READ = "SELECT settings FROM app.tenants"
_LIMIT = RateLimit(capacity=1e9, refill_per_second=1e9)


def _former_reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute("RESET ALL; RESET ROLE")


def _former_take(pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    with pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_runtime")
        conn.execute("SELECT app.pin_tenant(%s)", (tenant,))
        conn.cursor(row_factory=tuple_row).execute(_TAKE, (_LIMIT.capacity, _LIMIT.refill_per_second)).fetchone()


def _former_audit(pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    with pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_runtime")
        conn.execute("SELECT app.pin_tenant(%s)", (tenant,))
        PostgresAuditStore().record_in(conn, _record(tenant))


def _take_sync_commit(pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    with session.tenant_write(tenant, pool=pool) as conn:
        cursor = conn.cursor(row_factory=tuple_row).execute(_TAKE, (_LIMIT.capacity, _LIMIT.refill_per_second))
    cursor.fetchone()


def _take_without_reset(pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    with pool.connection() as conn, conn.pipeline(), psycopg.Transaction(conn):
        session.enter_tenant(conn, tenant)
        conn.execute("SET LOCAL synchronous_commit = off")
        cursor = conn.cursor(row_factory=tuple_row).execute(_TAKE, (_LIMIT.capacity, _LIMIT.refill_per_second))
    cursor.fetchone()


def _read_prologue_pipelined(pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    """A tenant transaction as it was opened before 2026-12-04: BEGIN and the prologue's five statements pipelined."""
    with pool.connection() as conn, contextlib.ExitStack() as stack:
        with conn.pipeline():
            stack.enter_context(psycopg.Transaction(conn))
            session._tenant_prologue(tenant).run(conn)
        conn.execute(_READ).fetchone()


def _read_current(pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    with session.tenant_transaction(tenant, pool=pool) as conn:
        conn.execute(_READ).fetchone()


def _empty_tenant_transaction(pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    with session.tenant_transaction(tenant, pool=pool):
        pass


def _empty_runtime_transaction(pool: ConnectionPool[Any]) -> None:
    with session.runtime_transaction(pool=pool):
        pass


def _take_current(pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    take_tenant_token(tenant, _LIMIT, pool=pool)


def _record(tenant: uuid.UUID) -> AuditRecord:
    return AuditRecord.new(
        tenant_id=tenant,
        principal_id="bench/bench",
        action="intent.read",
        resource_type="Intent",
        resource_id="x",
        decision="allow",
        reason="allowed",
    )


def _time(name: str, calls: int, run: Callable[[], None], data_dir: Path) -> dict[str, Any]:
    for _ in range(50):
        run()
    latencies = []
    server_before = _server_cpu(data_dir)
    cpu_before = time.process_time()  # the process: the former pool resets in a thread
    for _ in range(calls):
        started = time.perf_counter()
        run()
        latencies.append((time.perf_counter() - started) * 1000)
    client_cpu = (time.process_time() - cpu_before) * 1000 / calls
    server_cpu = (_server_cpu(data_dir) - server_before) / calls
    ordered = sorted(latencies)
    row = {
        "shape": name,
        "calls": calls,
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "client_cpu_ms": round(client_cpu, 3),
        "server_cpu_ms": round(server_cpu, 3),
    }
    print(
        f"  {name:44s} p50 {row['p50_ms']:6.3f} ms  p95 {row['p95_ms']:6.3f} ms  client CPU {client_cpu:6.3f} ms"
        f"  server CPU {server_cpu:6.3f} ms",
        flush=True,
    )
    return row


def _wal_syncs(admin_url: str, calls: int, run: Callable[[], None]) -> float:
    """WAL fsyncs per call, cluster-wide (backends report their WAL statistics within about 10 s of going idle)."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        time.sleep(11)
        before = admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
        for _ in range(calls):
            run()
        time.sleep(11)
        after = admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
    assert before is not None and after is not None  # one row, always
    return (int(after[0]) - int(before[0])) / calls


def _server_cpu(data_dir: Path) -> float:
    total = 0.0
    for pid in _postgres_pids(data_dir):
        try:
            total += _cpu_ms(pid, reaped=True)
        except OSError:
            continue
    return total


def main() -> None:
    """Start Postgres, time every shape, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    calls = parser.parse_args().calls
    with tempfile.TemporaryDirectory(prefix="qp-tx-") as tmp:
        data_dir = Path(tmp) / "postgres"
        admin_url = start_postgres(data_dir)
        urls = bootstrap(admin_url)
        try:
            apply_migrations(urls.owner)
            tenant = uuid.uuid4()
            with psycopg.connect(urls.control, autocommit=True) as conn, conn.transaction():
                conn.execute("SET LOCAL ROLE qp_platform")
                conn.execute(
                    "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
                    (tenant, f"bench-{tenant.hex[:8]}", uuid.uuid4()),
                )
            settings = Settings(
                QP_DATABASE_URL=urls.app,
                QP_DATABASE_CONTROL_URL=urls.control,
                QP_BLOB_CONNECTION_STRING="UseDevelopmentStorage=true",
            )
            pool = build_pool(urls.app, settings)
            former = ConnectionPool(urls.app, kwargs={"autocommit": True}, min_size=1, reset=_former_reset, open=True)
            store = PostgresAuditStore(pool)
            print(f"transactions: {calls} calls per shape, one client, load {os.getloadavg()[0]:.2f}")
            shapes: list[tuple[str, Callable[[], None]]] = [
                ("take, former (5 round trips + reset)", lambda: _former_take(former, tenant)),
                ("take, one round trip, synchronous commit", lambda: _take_sync_commit(pool, tenant)),
                ("take, one round trip, async commit (current)", lambda: _take_current(pool, tenant)),
                ("take, as current without the session reset", lambda: _take_without_reset(pool, tenant)),
                ("audit, former (5 round trips + reset)", lambda: _former_audit(former, tenant)),
                ("audit, one round trip (current)", lambda: store.record(_record(tenant))),
                ("read, prologue pipelined (former)", lambda: _read_prologue_pipelined(pool, tenant)),
                ("read, prologue one simple query (current)", lambda: _read_current(pool, tenant)),
                # The tenant pin's own cost: its call, its row (which gives even a read-only transaction a
                # transaction id and a commit record) and the row's removal at commit.
                ("empty transaction, tenant pinned", lambda: _empty_tenant_transaction(pool, tenant)),
                ("empty transaction, no tenant (no pin)", lambda: _empty_runtime_transaction(pool)),
            ]
            # Twice over, so that a burst of load from elsewhere shows up as a disagreement between the rounds.
            rows = [_time(name, calls, run, data_dir) for _ in range(2) for name, run in shapes]
            for name, run in (shapes[1], shapes[2], shapes[5]):
                syncs = _wal_syncs(admin_url, 500, run)
                rows.append({"shape": name, "wal_fsyncs_per_call": round(syncs, 3)})
                print(f"  {name:44s} WAL fsyncs per call {syncs:.3f}", flush=True)
            pool.close()
            former.close()
        finally:
            stop_postgres(data_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"transactions-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"calls": calls, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
