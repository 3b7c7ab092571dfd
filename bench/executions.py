# intent_ref: platform.execution
"""Execution throughput, per-step engine overhead, long intents and a start burst, beside a bare Postgres commit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from devhost.child import PROJECT_ROOT, DevhostProcess, free_port
from devhost.identity import mint_token_cli
from devhost.services import Azurite, start_azurite, start_postgres
from devhost.workers import WORKER_COUNT_SETTING
from shared.db.roles import DATABASE_NAME

RESULTS = PROJECT_ROOT / "bench" / "results"
USAGE = """\
    .venv/bin/python -m bench.executions [--shape dag5|chain5|chain50] [--executions 20] [--concurrency 4]
    .venv/bin/python -m bench.executions --burst 64              # 64 started at once, 64 event streams open
    .venv/bin/python -m bench.executions --suite                 # every figure of the second-generation table

Starts the platform in a devhost child process over its own embedded Postgres and Azurite in a temporary folder
(default pool: QP_DATABASE_POOL_MAX is not set for it; telemetry as deployed: spans and metrics exported to a file
there, no span per SQL statement), provisions a tenant whose quotas never throttle, times bare
commits on the same database (the floor), then runs one warm-up and the executions (event.emit and artifact.write:
no network) `--concurrency` at a time, each followed to its end through the events long poll. Prints a table and
writes JSON (default bench/results/executions-<time>.json). `--suite` alternates rounds of the 5-step intent at 8
at a time, the 5-step chain and the 50-step chain at 4 at a time, then runs the burst, and prints a markdown table
ready to paste into docs/performance.md.
"""
DEFINITIONS = """\
Definitions (server clocks, from GET /api/v1/executions/{id}, read once the timed batch is over):
  end-to-end, server  execution created_at -> finished_at; client: POST execute sent -> terminal status seen
  step overhead       step ready -> its attempt's started_at; ready = latest attempt finished_at of its depends_on,
                      or the execution's created_at for a root step (engine time only)
  step module         attempt started_at (dispatched) -> finished_at (worker recorded the result), split at the
                      work item's enqueued_at on the devhost's module-work log
  server per step     end-to-end server p50 / steps of the intent (the 5 -> 50 step comparison uses the chains)
  commit              INSERT one row + COMMIT on one connection to the same database (logged / temp scratch table)
  burst               N executions POSTed at once, each followed by its own events long poll (N streams open); a
                      503/429 is retried after its Retry-After (the same Idempotency-Key), any other 5xx after 1 s;
                      every 5xx answer is counted; drain = first POST sent -> last terminal status seen
"""
TERMINAL = {"succeeded", "failed", "cancelled"}
DAG5: list[dict[str, Any]] = [
    {"id": "a", "action": "event.emit", "type": "bench.tick", "data": {"i": 1}},
    {"id": "b", "action": "artifact.write", "name": "b.json", "content": {"x": 1}, "depends_on": ["a"]},
    {"id": "c", "action": "event.emit", "type": "bench.tick", "data": {"i": 2}, "depends_on": ["a"]},
    {"id": "d", "action": "artifact.write", "name": "d.json", "content": {"x": 2}, "depends_on": ["b", "c"]},
    {"id": "e", "action": "event.emit", "type": "bench.tick", "data": {"i": 3}, "depends_on": ["d"]},
]
STEPS = DAG5  # the name earlier versions exported


def chain(length: int) -> list[dict[str, Any]]:
    """`length` sequential steps, event.emit and artifact.write alternating (event first), each after the last."""
    steps: list[dict[str, Any]] = []
    for i in range(length):
        step: dict[str, Any] = (
            {"id": f"s{i:02d}", "action": "event.emit", "type": "bench.tick", "data": {"i": i}}
            if i % 2 == 0
            else {"id": f"s{i:02d}", "action": "artifact.write", "name": f"s{i:02d}.json", "content": {"i": i}}
        )
        if i:
            step["depends_on"] = [f"s{i - 1:02d}"]
        steps.append(step)
    return steps


SHAPES: dict[str, list[dict[str, Any]]] = {"dag5": DAG5, "chain5": chain(5), "chain20": chain(20), "chain50": chain(50)}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50_ms": float("nan"), "p95_ms": float("nan"), "max_ms": float("nan")}
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


UNTHROTTLED = {"requests_per_minute": 1_000_000, "burst": 100_000, "max_concurrent_executions": 10_000}


def retry_after_s(response: httpx.Response) -> float:
    """How long to wait before repeating a request answered 429 or 503: its Retry-After, at most 5 s."""
    return min(5.0, float(response.headers.get("Retry-After", "1") or 1))


BENCH_ROLES = ("Intent.Reader", "Intent.Author", "Intent.Executor")
BENCH_MODULES = ("event", "artifact", "approval")


def _provision(
    base_url: str,
    data_dir: Path,
    *,
    name: str = "bench",
    quotas: dict[str, int] = UNTHROTTLED,
    roles: Sequence[str] = BENCH_ROLES,
    modules: Sequence[str] = BENCH_MODULES,
) -> dict[str, str]:
    """A bench tenant (by default one whose quotas never throttle) allowed `modules`; headers of a token with
    `roles` (by default Author+Executor+Reader)."""
    admin = mint_token_cli(data_dir, base_url, "contoso", ["Platform.Admin"], [], None, 3600, False)
    entra_id = str(uuid.uuid4())
    httpx.post(
        f"{base_url}/api/v1/tenants",
        headers={"Authorization": f"Bearer {admin}"},
        json={
            "name": f"{name}-{entra_id[:8]}",
            "entra_tenant_id": entra_id,
            "allowed_targets": ["staging"],
            "allowed_modules": list(modules),
            "quotas": quotas,
        },
        timeout=30,
    ).raise_for_status()
    token = mint_token_cli(data_dir, base_url, entra_id, list(roles), [], None, 3600, False)
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Platform:
    """A running devhost with its Azurite, its data folder and a provisioned bench tenant."""

    process: DevhostProcess
    azurite: Azurite
    data_dir: Path
    headers: dict[str, str]

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def postgres_url(self) -> str:
        """The superuser URL of the devhost's embedded Postgres (re-attached, not restarted)."""
        return start_postgres(self.data_dir / "postgres")


DEFAULT_WORKERS = 2
"""Worker processes of the bench's devhost (FUNCTIONS_WORKER_PROCESS_COUNT), as local.settings.sample.json has."""


def deployed_telemetry(data_dir: Path) -> dict[str, str]:
    """Telemetry as a deployment exports it: spans and metrics leave through a batching exporter (a file in the
    bench's folder stands in for Application Insights), without a span per SQL statement (off in bicep/ and
    terraform/; the local sample settings turn it on to diagnose, and a bench must not measure that)."""
    return {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "",
        "QP_TELEMETRY_FILE": str(data_dir / "telemetry.jsonl"),
        "QP_TELEMETRY_SQL_SPANS": "false",
    }


@contextlib.contextmanager
def running_platform(workers: int = DEFAULT_WORKERS, settings: dict[str, str] | None = None) -> Iterator[Platform]:
    """Azurite and a devhost over a fresh embedded Postgres in a temporary folder, default pool, one bench tenant;
    its functions run in `workers` worker processes (0: in the host process), telemetry as deployed; `settings` add
    or override app settings."""
    with tempfile.TemporaryDirectory(prefix="qp-bench-") as tmp:
        data_dir = Path(tmp)
        azurite = start_azurite(
            data_dir / "azurite", blob_port=free_port(), queue_port=free_port(), table_port=free_port()
        )
        env = {
            "QP_BLOB_CONNECTION_STRING": azurite.connection_string,
            WORKER_COUNT_SETTING: str(workers),
            **deployed_telemetry(data_dir),
            **(settings or {}),
        }
        os.environ.pop("QP_DATABASE_POOL_MAX", None)  # the default pool, whatever the caller's shell says
        process = DevhostProcess(
            PROJECT_ROOT, data_dir, free_port(), env, data_dir / "platform.log", extra_args=("--seed-demo",)
        )
        try:
            process.start(timeout=120)
            yield Platform(process, azurite, data_dir, _provision(process.base_url, data_dir))
        except BaseException:
            print(process.log()[-5000:])
            raise
        finally:
            if process.process is not None:
                process.stop()
            azurite.stop()


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


def _history_kinds() -> list[tuple[str, int]]:
    """Durable history event kinds counted per execution (none when the devhost's Durable store is another)."""
    try:
        from devhost.durable.protocol import EventType

        return [
            ("episodes", int(EventType.OrchestratorStarted)),
            ("activities", int(EventType.TaskScheduled)),
            ("timers", int(EventType.TimerCreated)),
            ("raised_events", int(EventType.EventRaised)),
        ]
    except (ImportError, AttributeError):
        return []


def _engine_trace(pg_dir: Path, spans: Spans, executions: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Split each step's module span at its work item's enqueued_at; count Durable history events per execution.
    Either part is left out when the devhost keeps that data elsewhere."""
    split: dict[str, list[float]] = {"dispatched -> on module-work log": [], "on log -> finished (hop+module)": []}
    per: dict[str, float] = {}
    with psycopg.connect(start_postgres(pg_dir), dbname=DATABASE_NAME, autocommit=True) as conn:
        with contextlib.suppress(psycopg.Error, KeyError, TypeError, ValueError):
            for body, enqueued in conn.execute(
                "SELECT body, enqueued_at FROM devhost_eventhubs.events WHERE hub = 'module-work'"
            ):
                item = json.loads(body)
                span = spans.get((item["execution_id"], item["step_id"]))
                if span is not None:
                    split["dispatched -> on module-work log"].append(_ms(span[0], enqueued))
                    split["on log -> finished (hop+module)"].append(_ms(enqueued, span[1]))
        with contextlib.suppress(psycopg.Error):
            history = "SELECT (event->>'EventType')::int, count(*) FROM devhost_durable.history GROUP BY 1"
            counts: dict[int, int] = dict(conn.execute(history).fetchall())
            per = {name: round(counts.get(kind, 0) / executions, 1) for name, kind in _history_kinds()}
    return [{"measure": f"  module: {name}", **_stats(values)} for name, values in split.items() if values], per


FOLLOW = {"mode": "stream"}
"""How `_one` follows an execution: `stream` (server-sent events, what the client and qp use) or `poll` (the JSON
long poll, what the figures before 2026-12-04 used)."""
TERMINAL_EVENTS = {"execution_completed", "execution_failed", "execution_cancelled"}


async def _until_terminal(client: httpx.AsyncClient, execution_id: str, started: float) -> None:
    url = f"/api/v1/executions/{execution_id}/events"
    if FOLLOW["mode"] == "stream":
        async with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("event: ") and line[7:] in TERMINAL_EVENTS:
                    return
        raise RuntimeError(f"the stream of execution {execution_id} ended before its terminal event")
    after, status = 0, "pending"
    while status not in TERMINAL:
        page = await client.get(url, params={"after": after, "wait": 10})
        page.raise_for_status()
        body = page.json()
        after, status = body["next_after"], body["status"]
        if time.perf_counter() - started > 300:
            raise TimeoutError(f"execution {execution_id} still {status} after 300 s")


async def _run_one(client: httpx.AsyncClient, intent_id: str) -> tuple[str, float]:
    """Start one execution and follow it to its end, as a client does; its id and the client's ms."""
    started = time.perf_counter()
    accepted = await client.post(f"/api/v1/intents/{intent_id}/execute", json={"input": {}})
    accepted.raise_for_status()
    execution_id = str(accepted.json()["execution_id"])
    await _until_terminal(client, execution_id, started)
    return execution_id, (time.perf_counter() - started) * 1000


async def _detail(client: httpx.AsyncClient, execution_id: str, client_ms: float) -> dict[str, Any]:
    """The execution's detail (steps, attempts, server clocks) for the analysis: read after the timed window."""
    detail = await client.get(f"/api/v1/executions/{execution_id}")
    detail.raise_for_status()
    return {"client_ms": client_ms, **detail.json()}


async def _one(client: httpx.AsyncClient, intent_id: str) -> dict[str, Any]:
    return await _detail(client, *await _run_one(client, intent_id))


Spans = dict[tuple[str, str], tuple[datetime, datetime]]


def _analyse(
    execution: dict[str, Any], steps: list[dict[str, Any]], all_spans: Spans
) -> tuple[float, list[float], list[float]]:
    """(server end-to-end ms, per-step overheads ms, per-step module ms) of one finished execution."""
    created = _ts(execution["created_at"])
    depends = {s["id"]: s.get("depends_on", []) for s in steps}
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


def _client(base_url: str, headers: dict[str, str], connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60)


async def create_intent(client: httpx.AsyncClient, steps: list[dict[str, Any]]) -> str:
    """A new intent of `steps` on the staging target; its id."""
    created = await client.post(
        "/api/v1/intents",
        json={"name": f"bench-exec-{uuid.uuid4().hex[:8]}", "definition": {"target": "staging", "steps": steps}},
    )
    created.raise_for_status()
    return str(created.json()["id"])


async def run_batch(
    base_url: str,
    headers: dict[str, str],
    steps: list[dict[str, Any]],
    executions: int,
    concurrency: int,
    intent_id: str | None = None,
) -> dict[str, Any]:
    """One warm-up, then `executions` of `steps`, `concurrency` at a time; wall time and each execution's detail."""
    async with _client(base_url, headers, concurrency * 2) as client:
        intent_id = intent_id or await create_intent(client, steps)
        await _one(client, intent_id)  # warm-up: imports, pools, first orchestration of this intent
        todo = iter(range(executions))
        runs: list[tuple[str, float]] = []

        async def worker() -> None:
            for _ in todo:
                runs.append(await _run_one(client, intent_id))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        # The analysis reads are the bench's, not the work measured: they come after the clock stops.
        results = [await _detail(client, execution_id, client_ms) for execution_id, client_ms in runs]
    return {"wall_s": wall, "executions": results, "intent_id": intent_id}


def summarise(run: dict[str, Any], steps: list[dict[str, Any]], concurrency: int, spans: Spans) -> dict[str, Any]:
    """Throughput and latency rows of one batch (`spans` collects each step's span for the module split)."""
    done = run["executions"]
    analysed = [_analyse(e, steps, spans) for e in done if e["status"] == "succeeded"]
    server = _stats([a[0] for a in analysed])
    return {
        "executions": len(done),
        "concurrency": concurrency,
        "steps_per_execution": len(steps),
        "succeeded": len(analysed),
        "wall_s": round(run["wall_s"], 2),
        "executions_per_s": round(len(done) / run["wall_s"], 2),
        "steps_per_s": round(len(done) * len(steps) / run["wall_s"], 2),
        "server_ms_per_step_p50": round(server["p50_ms"] / len(steps), 2),
        "latency": [
            {"measure": "end-to-end, client (POST execute -> terminal seen)", **_stats([e["client_ms"] for e in done])},
            {"measure": "end-to-end, server (created_at -> finished_at)", **server},
            {"measure": "step overhead (deps done -> step started)", **_stats([o for a in analysed for o in a[1]])},
            {"measure": "step module (started -> finished)", **_stats([m for a in analysed for m in a[2]])},
        ],
        "statuses": [e["status"] for e in done],
    }


def _row(summary: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(r for r in summary["latency"] if r["measure"].startswith(prefix))


async def burst(base_url: str, headers: dict[str, str], count: int, deadline_s: float) -> dict[str, Any]:
    """`count` executions of the 5-step intent POSTed at once, each followed by its own events long poll."""
    answers: Counter[str] = Counter()
    started = time.perf_counter()

    async def call(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response | None:
        while time.perf_counter() - started < deadline_s:
            try:
                response = await client.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                answers[f"{method} transport error {type(exc).__name__}"] += 1
                await asyncio.sleep(1)
                continue
            if response.status_code < 400:
                return response
            kind = ""
            with contextlib.suppress(ValueError, AttributeError):
                kind = " " + str(response.json().get("type", "")).rsplit("/", 1)[-1]
            answers[f"{method} {response.status_code}{kind}"] += 1
            if response.status_code in (429, 503):
                await asyncio.sleep(retry_after_s(response))
            elif response.status_code >= 500:
                await asyncio.sleep(1)
            else:
                response.raise_for_status()
        return None

    async with _client(base_url, headers, count * 2 + 8) as client:
        intent_id = await create_intent(client, DAG5)
        await _one(client, intent_id)  # warm-up
        accepted_at: list[float] = []
        finished: dict[str, str] = {}
        drained_at: list[float] = []

        async def one() -> None:
            key = {"Idempotency-Key": f"bench-burst-{uuid.uuid4().hex}"}
            response = await call(
                client, "POST", f"/api/v1/intents/{intent_id}/execute", json={"input": {}}, headers=key
            )
            if response is None:
                return
            accepted_at.append(time.perf_counter() - started)
            execution_id, after, status = response.json()["execution_id"], 0, "pending"
            while status not in TERMINAL:
                page = await call(
                    client, "GET", f"/api/v1/executions/{execution_id}/events", params={"after": after, "wait": 10}
                )
                if page is None:
                    return
                body = page.json()
                after, status = body["next_after"], body["status"]
            finished[execution_id] = status
            drained_at.append(time.perf_counter() - started)

        await asyncio.gather(*(one() for _ in range(count)))
    statuses = Counter(finished.values())
    fivexx = sum(n for key, n in answers.items() if key.split(" ")[1].startswith("5"))
    return {
        "burst": count,
        "accepted": len(accepted_at),
        "succeeded": statuses.get("succeeded", 0),
        "failed_or_cancelled": sum(statuses.values()) - statuses.get("succeeded", 0),
        "unfinished": count - len(finished),
        "http_5xx": fivexx,
        "http_429": sum(n for key, n in answers.items() if key.split(" ")[1] == "429"),
        "answers_other_than_2xx": dict(answers),
        "all_accepted_s": round(max(accepted_at), 2) if accepted_at else None,
        "drain_s": round(max(drained_at), 2) if drained_at else None,
        "deadline_s": deadline_s,
    }


def _table(summary: dict[str, Any], floor: list[dict[str, Any]]) -> str:
    lines = [
        f"executions {summary['executions']} of {summary['steps_per_execution']} steps (concurrency "
        f"{summary['concurrency']}, {summary['succeeded']} succeeded) in {summary['wall_s']} s: "
        f"{summary['executions_per_s']} executions/s, {summary['steps_per_s']} steps/s, "
        f"server {summary['server_ms_per_step_p50']} ms per step (p50)",
        "",
        "| measure | n | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for row in [*summary["latency"], *floor]:
        lines.append(f"| {row['measure']} | {row['n']} | {row['p50_ms']} | {row['p95_ms']} | {row['max_ms']} |")
    return "\n".join(lines)


def _burst_lines(result: dict[str, Any]) -> str:
    return (
        f"burst {result['burst']}: {result['accepted']} accepted (all by {result['all_accepted_s']} s), "
        f"{result['succeeded']} succeeded, {result['failed_or_cancelled']} failed/cancelled, "
        f"{result['unfinished']} unfinished; {result['http_5xx']} answers 5xx, {result['http_429']} answers 429; "
        f"drained in {result['drain_s']} s\n  answers other than 2xx: {result['answers_other_than_2xx']}"
    )


def _write(out: Path | None, name: str, payload: dict[str, Any]) -> None:
    out = out or RESULTS / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {out}")


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _spread(values: list[float]) -> str:
    """The median, with every round's value when there are several."""
    if len(values) == 1:
        return f"{values[0]:g}"
    return f"{_median(values):g} ({' / '.join(f'{v:g}' for v in values)})"


def suite_table(rounds: dict[str, list[dict[str, Any]]], result: dict[str, Any], floor_p50: float) -> str:
    """The issue's figures as markdown rows: `| measure | target | this run |` (medians over the rounds, each
    round's value in brackets)."""

    def col(shape: str, key: str) -> list[float]:
        return [s[key] for s in rounds[shape]]

    def lat(shape: str, prefix: str, key: str) -> list[float]:
        return [_row(s, prefix)[key] for s in rounds[shape]]

    per5, per50 = _median(col("chain5", "server_ms_per_step_p50")), _median(col("chain50", "server_ms_per_step_p50"))
    overhead = lat("dag5", "step overhead", "p50_ms")
    rows = [
        ("5-step intent, 8 at a time: executions/s", ">= 25", _spread(col("dag5", "executions_per_s"))),
        ("  latency p50, ms (client, POST -> terminal)", "", _spread(lat("dag5", "end-to-end, client", "p50_ms"))),
        ("  latency p95, ms (client)", "", _spread(lat("dag5", "end-to-end, client", "p95_ms"))),
        (
            "  latency p50 / p95, ms (server)",
            "",
            " / ".join(f"{_median(lat('dag5', 'end-to-end, server', k)):g}" for k in ("p50_ms", "p95_ms")),
        ),
        ("  step overhead p50, ms", "<= 20", _spread(overhead)),
        ("  step overhead p50 / one bare commit p50", "", f"{_median(overhead) / floor_p50:.0f}x ({floor_p50} ms)"),
        ("5-step chain, 4 at a time: server ms per step (p50)", "", _spread(col("chain5", "server_ms_per_step_p50"))),
        ("50-step chain, 4 at a time: server ms per step (p50)", "", _spread(col("chain50", "server_ms_per_step_p50"))),
        ("  50-step / 5-step server time per step", "<= 1.5", f"{per50 / per5:.2f}"),
        ("  50-step chain: steps/s", "", _spread(col("chain50", "steps_per_s"))),
        (
            f"burst: {result['burst']} started at once + {result['burst']} event streams, default pool: 5xx answers",
            "0",
            str(result["http_5xx"]),
        ),
        ("  completed (succeeded / of)", "all", f"{result['succeeded']} / {result['burst']}"),
        ("  time to drain, s (all accepted by)", "", f"{result['drain_s']} ({result['all_accepted_s']})"),
        ("  429 answers (retried)", "", str(result["http_429"])),
    ]
    lines = ["| measure | target | this run |", "|---|---|---|"]
    lines += [f"| {m} | {t} | {v} |" for m, t, v in rows]
    return "\n".join(lines)


async def _suite(platform: Platform, rounds: int, scale: int) -> dict[str, list[dict[str, Any]]]:
    plan = [("dag5", 8, 24 * scale), ("chain5", 4, 12 * scale), ("chain50", 4, 4 * scale)]
    intents: dict[str, str] = {}
    async with _client(platform.base_url, platform.headers, 4) as client:
        for shape, _, _ in plan:
            intents[shape] = await create_intent(client, SHAPES[shape])
    out: dict[str, list[dict[str, Any]]] = {shape: [] for shape, _, _ in plan}
    for r in range(rounds):
        for shape, concurrency, executions in plan:
            print(f"round {r + 1}/{rounds}: {shape}, {executions} executions {concurrency} at a time", flush=True)
            run = await run_batch(
                platform.base_url, platform.headers, SHAPES[shape], executions, concurrency, intents[shape]
            )
            summary = summarise(run, SHAPES[shape], concurrency, {})
            print(_table(summary, []), flush=True)
            out[shape].append(summary)
    return out


def add_dispatch_wait_option(parser: argparse.ArgumentParser) -> None:
    """`--dispatch-wait-ms`: the devhost's QP_DISPATCH_RESULT_WAIT_MS for a bench (see dispatch_wait_settings)."""
    parser.add_argument(
        "--dispatch-wait-ms",
        type=int,
        default=None,
        help="QP_DISPATCH_RESULT_WAIT_MS for the devhost (0: every result raised as an event, ADR 0034)",
    )


def dispatch_wait_settings(args: argparse.Namespace) -> dict[str, str]:
    """The app settings `--dispatch-wait-ms` asks for (none when it was not given)."""
    return {} if args.dispatch_wait_ms is None else {"QP_DISPATCH_RESULT_WAIT_MS": str(args.dispatch_wait_ms)}


def main() -> None:
    """Start the host, time the floor, run the executions (or the burst, or the suite), print and write JSON."""
    parser = argparse.ArgumentParser(
        description=f"{__doc__}\n\n{USAGE}", epilog=DEFINITIONS, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="dag5", help="dag5: 5 steps on 4 levels")
    parser.add_argument("--executions", type=int, default=20, help="executions to run (after one warm-up)")
    parser.add_argument("--concurrency", type=int, default=4, help="executions in flight at once")
    parser.add_argument("--commits", type=int, default=200, help="bare commits timed per scratch table")
    parser.add_argument("--burst", type=int, default=0, help="instead: this many started at once, streams open")
    parser.add_argument("--burst-deadline", type=float, default=300, help="seconds before the burst gives up")
    parser.add_argument("--suite", action="store_true", help="instead: every figure of the issue, markdown table")
    parser.add_argument("--rounds", type=int, default=2, help="suite: rounds of the three workloads, alternating")
    parser.add_argument("--scale", type=int, default=1, help="suite: multiply the executions per round")
    parser.add_argument("--json-out", type=Path, default=None, help="default bench/results/executions-<time>.json")
    parser.add_argument(
        "--follow", choices=["stream", "poll"], default="stream", help="server-sent events, or the JSON long poll"
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="the devhost's worker processes (0: functions in the host)"
    )
    add_dispatch_wait_option(parser)
    args = parser.parse_args()
    FOLLOW["mode"] = args.follow
    steps = SHAPES[args.shape]
    settings = dispatch_wait_settings(args)
    with running_platform(args.workers, settings) as platform:
        floor, pg_settings = _commit_floor(platform.data_dir / "postgres", args.commits)
        if args.suite:
            rounds = asyncio.run(_suite(platform, args.rounds, args.scale))
            print(f"burst: {args.burst or 64} started at once", flush=True)
            result = asyncio.run(burst(platform.base_url, platform.headers, args.burst or 64, args.burst_deadline))
        elif args.burst:
            print(f"burst: {args.burst} started at once", flush=True)
            result = asyncio.run(burst(platform.base_url, platform.headers, args.burst, args.burst_deadline))
        else:
            print(
                f"executions benchmark: {args.executions} executions of {len(steps)} steps ({args.shape}), "
                f"concurrency {args.concurrency}",
                flush=True,
            )
            run = asyncio.run(run_batch(platform.base_url, platform.headers, steps, args.executions, args.concurrency))
            spans: Spans = {}
            summary = summarise(run, steps, args.concurrency, spans)
            split, per_execution = _engine_trace(platform.data_dir / "postgres", spans, args.executions + 1)
    print()
    if args.suite:
        for shape, summaries in rounds.items():
            print(f"{shape}: {[s['executions_per_s'] for s in summaries]} executions/s per round")
        print(_burst_lines(result))
        print(f"postgres: {pg_settings}; commit floor: {floor}\n")
        print(suite_table(rounds, result, floor[0]["p50_ms"]))
        _write(
            args.json_out,
            "executions-suite",
            {"rounds": rounds, "burst": result, "commit_floor": floor, "postgres": pg_settings},
        )
        return
    if args.burst:
        print(_burst_lines(result))
        _write(args.json_out, "executions-burst", {**result, "postgres": pg_settings, "definitions": DEFINITIONS})
        return
    summary["latency"] += split
    summary["durable_history_per_execution"] = per_execution
    summary["shape"] = args.shape
    print(_table(summary, floor))
    print(f"\n{DEFINITIONS}", end="")
    print(f"Durable history per execution (warm-up included): {per_execution}")
    print(f"postgres: {pg_settings}")
    _write(
        args.json_out,
        "executions",
        {**summary, "commit_floor": floor, "postgres": pg_settings, "definitions": DEFINITIONS},
    )


if __name__ == "__main__":
    main()
