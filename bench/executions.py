# intent_ref: platform.execution
"""Execution throughput and per-step engine overhead of a 5-step built-in intent, beside a bare Postgres commit."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from devhost.child import PROJECT_ROOT, DevhostProcess, free_port
from devhost.durable.protocol import EventType
from devhost.identity import mint_token_cli
from devhost.services import start_azurite, start_postgres
from shared.db.roles import DATABASE_NAME

RESULTS = PROJECT_ROOT / "bench" / "results"
USAGE = """\
    .venv/bin/python -m bench.executions [--executions 20] [--concurrency 4] [--commits 200] [--json-out PATH]

Starts the platform in a devhost child process over its own embedded Postgres and Azurite in a temporary folder,
provisions a tenant whose quotas never throttle, times bare commits on the same database (the floor), then runs one
warm-up and the executions (event.emit and artifact.write: no network) `--concurrency` at a time, each followed to
its end through the events long poll. Prints a table and writes JSON (default bench/results/executions-<time>.json).
"""
DEFINITIONS = """\
Definitions (server clocks, from GET /api/v1/executions/{id}):
  end-to-end, server  execution created_at -> finished_at; client: POST execute sent -> terminal status seen
  step overhead       step ready -> its attempt's started_at; ready = latest attempt finished_at of its depends_on,
                      or the execution's created_at for a root step (engine time only)
  step module         attempt started_at (dispatched) -> finished_at (worker recorded the result), split at the
                      work item's enqueued_at on the devhost's module-work log
  commit              INSERT one row + COMMIT on one connection to the same database (logged / temp scratch table)
"""
TERMINAL = {"succeeded", "failed", "cancelled"}
STEPS: list[dict[str, Any]] = [
    {"id": "a", "action": "event.emit", "type": "bench.tick", "data": {"i": 1}},
    {"id": "b", "action": "artifact.write", "name": "b.json", "content": {"x": 1}, "depends_on": ["a"]},
    {"id": "c", "action": "event.emit", "type": "bench.tick", "data": {"i": 2}, "depends_on": ["a"]},
    {"id": "d", "action": "artifact.write", "name": "d.json", "content": {"x": 2}, "depends_on": ["b", "c"]},
    {"id": "e", "action": "event.emit", "type": "bench.tick", "data": {"i": 3}, "depends_on": ["d"]},
]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 2),
        "p95_ms": round(_percentile(values, 0.95), 2),
        "max_ms": round(max(values), 2),
    }


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _ms(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000


def _provision(base_url: str, data_dir: Path) -> dict[str, str]:
    """A bench tenant whose quotas never throttle; returns Author+Executor+Reader headers."""
    admin = mint_token_cli(data_dir, base_url, "contoso", ["Platform.Admin"], [], None, 3600, False)
    entra_id = str(uuid.uuid4())
    httpx.post(
        f"{base_url}/api/v1/tenants",
        headers={"Authorization": f"Bearer {admin}"},
        json={
            "name": f"bench-{entra_id[:8]}",
            "entra_tenant_id": entra_id,
            "allowed_targets": ["staging"],
            "allowed_modules": ["event", "artifact"],
            "quotas": {"requests_per_minute": 1_000_000, "burst": 100_000, "max_concurrent_executions": 10_000},
        },
        timeout=30,
    ).raise_for_status()
    token = mint_token_cli(
        data_dir, base_url, entra_id, ["Intent.Reader", "Intent.Author", "Intent.Executor"], [], None, 3600, False
    )
    return {"Authorization": f"Bearer {token}"}


def _commit_floor(pg_dir: Path, commits: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """INSERT one row + COMMIT, `commits` times, into a logged and a temporary scratch table."""
    rows = []
    with psycopg.connect(start_postgres(pg_dir), dbname=DATABASE_NAME, autocommit=True) as conn:
        settings = {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "wal_sync_method")
        }
        conn.execute("DROP TABLE IF EXISTS public.bench_scratch")
        conn.execute("CREATE TABLE public.bench_scratch (id bigserial PRIMARY KEY, body jsonb)")
        conn.execute("CREATE TEMP TABLE bench_scratch_tmp (id bigserial PRIMARY KEY, body jsonb)")
        for label, table in (
            ("commit, logged table", "public.bench_scratch"),
            ("commit, temp table", "bench_scratch_tmp"),
        ):
            times = []
            for i in range(commits):
                started = time.perf_counter()
                with conn.transaction():
                    conn.execute(f"INSERT INTO {table} (body) VALUES (%s)", (json.dumps({"i": i}),))
                times.append((time.perf_counter() - started) * 1000)
            rows.append({"measure": label, **_stats(times)})
        conn.execute("DROP TABLE public.bench_scratch")
    return rows, settings


def _engine_trace(pg_dir: Path, spans: Spans, executions: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Split each step's module span at its work item's enqueued_at; count Durable history events per execution."""
    split: dict[str, list[float]] = {"dispatched -> on module-work log": [], "on log -> finished (hop+module)": []}
    with psycopg.connect(start_postgres(pg_dir), dbname=DATABASE_NAME) as conn:
        for body, enqueued in conn.execute(
            "SELECT body, enqueued_at FROM devhost_eventhubs.events WHERE hub = 'module-work'"
        ):
            item = json.loads(body)
            span = spans.get((item["execution_id"], item["step_id"]))
            if span is not None:
                split["dispatched -> on module-work log"].append(_ms(span[0], enqueued))
                split["on log -> finished (hop+module)"].append(_ms(enqueued, span[1]))
        history = "SELECT (event->>'EventType')::int, count(*) FROM devhost_durable.history GROUP BY 1"
        counts: dict[int, int] = dict(conn.execute(history).fetchall())
    per = {
        name: round(counts.get(int(kind), 0) / executions, 1)
        for name, kind in (
            ("episodes", EventType.OrchestratorStarted),
            ("activities", EventType.TaskScheduled),
            ("timers", EventType.TimerCreated),
            ("raised_events", EventType.EventRaised),
        )
    }
    return [{"measure": f"  module: {name}", **_stats(values)} for name, values in split.items() if values], per


async def _one(client: httpx.AsyncClient, intent_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    accepted = await client.post(f"/api/v1/intents/{intent_id}/execute", json={"input": {}})
    accepted.raise_for_status()
    execution_id = accepted.json()["execution_id"]
    after, status = 0, "pending"
    while status not in TERMINAL:
        page = await client.get(f"/api/v1/executions/{execution_id}/events", params={"after": after, "wait": 10})
        page.raise_for_status()
        body = page.json()
        after, status = body["next_after"], body["status"]
        if time.perf_counter() - started > 300:
            raise TimeoutError(f"execution {execution_id} still {status} after 300 s")
    client_ms = (time.perf_counter() - started) * 1000
    detail = await client.get(f"/api/v1/executions/{execution_id}")
    detail.raise_for_status()
    return {"client_ms": client_ms, **detail.json()}


Spans = dict[tuple[str, str], tuple[datetime, datetime]]


def _analyse(execution: dict[str, Any], all_spans: Spans) -> tuple[float, list[float], list[float]]:
    """(server end-to-end ms, per-step overheads ms, per-step module ms) of one finished execution."""
    created = _ts(execution["created_at"])
    depends = {s["id"]: s.get("depends_on", []) for s in STEPS}
    spans = {}
    for step in execution["steps"]:
        runs = [a for a in step["attempts"] if a["phase"] == "run"]
        spans[step["step_id"]] = (_ts(runs[0]["started_at"]), _ts(runs[-1]["finished_at"]))
        all_spans[(execution["id"], step["step_id"])] = spans[step["step_id"]]
    overheads, modules = [], []
    for step_id, (start, end) in spans.items():
        ready = max((spans[d][1] for d in depends[step_id]), default=created)
        overheads.append(_ms(ready, start))
        modules.append(_ms(start, end))
    return _ms(created, _ts(execution["finished_at"])), overheads, modules


async def _run(base_url: str, headers: dict[str, str], executions: int, concurrency: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as client:
        created = await client.post(
            "/api/v1/intents",
            json={"name": f"bench-exec-{uuid.uuid4().hex[:8]}", "definition": {"target": "staging", "steps": STEPS}},
        )
        created.raise_for_status()
        intent_id = created.json()["id"]
        await _one(client, intent_id)  # warm-up: imports, pools, first orchestration
        todo = iter(range(executions))
        results: list[dict[str, Any]] = []

        async def worker() -> None:
            for _ in todo:
                results.append(await _one(client, intent_id))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"wall_s": wall, "executions": results}


def _table(summary: dict[str, Any], floor: list[dict[str, Any]]) -> str:
    lines = [
        f"executions {summary['executions']} (concurrency {summary['concurrency']}, "
        f"{summary['succeeded']} succeeded) in {summary['wall_s']} s: {summary['executions_per_s']} executions/s,"
        f" {summary['steps_per_s']} steps/s",
        "",
        "| measure | n | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for row in [*summary["latency"], *floor]:
        lines.append(f"| {row['measure']} | {row['n']} | {row['p50_ms']} | {row['p95_ms']} | {row['max_ms']} |")
    return "\n".join(lines)


def main() -> None:
    """Start the host, time the floor, run the executions, print the table and write the JSON."""
    parser = argparse.ArgumentParser(
        description=f"{__doc__}\n\n{USAGE}", epilog=DEFINITIONS, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--executions", type=int, default=20, help="executions to run (after one warm-up)")
    parser.add_argument("--concurrency", type=int, default=4, help="executions in flight at once")
    parser.add_argument("--commits", type=int, default=200, help="bare commits timed per scratch table")
    parser.add_argument("--json-out", type=Path, default=None, help="default bench/results/executions-<time>.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qp-bench-") as tmp:
        data_dir = Path(tmp)
        azurite = start_azurite(
            data_dir / "azurite", blob_port=free_port(), queue_port=free_port(), table_port=free_port()
        )
        platform = DevhostProcess(
            PROJECT_ROOT,
            data_dir,
            free_port(),
            {"QP_BLOB_CONNECTION_STRING": azurite.connection_string},
            data_dir / "platform.log",
            extra_args=("--seed-demo",),
        )
        try:
            platform.start(timeout=120)
            headers = _provision(platform.base_url, data_dir)
            floor, pg_settings = _commit_floor(data_dir / "postgres", args.commits)
            print(
                f"executions benchmark: {args.executions} executions of {len(STEPS)} steps, "
                f"concurrency {args.concurrency}",
                flush=True,
            )
            run = asyncio.run(_run(platform.base_url, headers, args.executions, args.concurrency))
            spans: Spans = {}
            analysed = [_analyse(e, spans) for e in run["executions"] if e["status"] == "succeeded"]
            split, per_execution = _engine_trace(data_dir / "postgres", spans, args.executions + 1)
        except BaseException:
            print(platform.log()[-5000:])
            raise
        finally:
            if platform.process is not None:
                platform.stop()
            azurite.stop()
    done = run["executions"]
    summary = {
        "executions": len(done),
        "concurrency": args.concurrency,
        "steps_per_execution": len(STEPS),
        "succeeded": len(analysed),
        "wall_s": round(run["wall_s"], 2),
        "executions_per_s": round(len(done) / run["wall_s"], 2),
        "steps_per_s": round(len(done) * len(STEPS) / run["wall_s"], 2),
        "latency": [
            {"measure": "end-to-end, client (POST execute -> terminal seen)", **_stats([e["client_ms"] for e in done])},
            {"measure": "end-to-end, server (created_at -> finished_at)", **_stats([a[0] for a in analysed])},
            {"measure": "step overhead (deps done -> step started)", **_stats([o for a in analysed for o in a[1]])},
            {"measure": "step module (started -> finished)", **_stats([m for a in analysed for m in a[2]])},
            *split,
        ],
        "durable_history_per_execution": per_execution,
    }
    print()
    print(_table(summary, floor))
    print(f"\n{DEFINITIONS}", end="")
    print(f"Durable history per execution (warm-up included): {per_execution}")
    print(f"postgres: {pg_settings}")
    out = args.json_out or RESULTS / f"executions-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                **summary,
                "commit_floor": floor,
                "postgres": pg_settings,
                "definitions": DEFINITIONS,
                "statuses": [e["status"] for e in done],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
