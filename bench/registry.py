# intent_ref: platform.registry
"""Registry latency and throughput through the devhost, beside a bare FastAPI endpoint served the same way.

    .venv/bin/python -m bench.registry [--seconds 3] [--clients 1,8,32]

Starts two devhosts on free ports over one embedded Postgres in a temporary folder (the platform with the demo
seed, and bench/bare_app), provisions a tenant with generous quotas, then drives create, get, list and plan at
each concurrency for a fixed time. Prints a table and writes bench/results/registry-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.executions import deployed_telemetry
from devhost.child import PROJECT_ROOT, DevhostProcess, free_port
from devhost.identity import mint_token_cli

RESULTS = PROJECT_ROOT / "bench" / "results"
Operation = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


def _definition(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {"team": "bench"},
        "definition": {
            "target": "staging",
            "steps": [
                {"id": "build", "action": "http.request", "method": "POST", "url": "https://build.example/run"},
                {"id": "test-a", "action": "http.request", "url": "https://ci.example/a", "depends_on": ["build"]},
                {"id": "test-b", "action": "http.request", "url": "https://ci.example/b", "depends_on": ["build"]},
                {
                    "id": "ship",
                    "action": "http.request",
                    "method": "POST",
                    "url": "https://deploy.example/go",
                    "depends_on": ["test-a", "test-b"],
                },
            ],
        },
    }


def _unique_name(run: str) -> str:
    return f"b{run}-{uuid.uuid4().hex[:12]}"


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def _drive(
    operation: Operation, clients: int, seconds: float, base_url: str, headers: dict[str, str]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await operation(client, next(counter))
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code >= 400:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(ordered),
        "errors": errors,
        "throughput_rps": round(len(ordered) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(_percentile(ordered, 0.95), 2),
        "p99_ms": round(_percentile(ordered, 0.99), 2),
    }


def _provision(base_url: str, data_dir: Path) -> tuple[str, dict[str, str]]:
    """A bench tenant with quotas that never throttle; returns (its Entra tenant id, Author+Executor headers)."""
    admin = mint_token_cli(data_dir, base_url, "contoso", ["Platform.Admin"], [], None, 3600, False)
    entra_id = str(uuid.uuid4())
    created = httpx.post(
        f"{base_url}/api/v1/tenants",
        headers={"Authorization": f"Bearer {admin}"},
        json={
            "name": f"bench-{entra_id[:8]}",
            "entra_tenant_id": entra_id,
            "allowed_targets": ["staging"],
            "allowed_modules": ["http"],
            "quotas": {"requests_per_minute": 1_000_000, "burst": 100_000},
        },
    )
    created.raise_for_status()
    token = mint_token_cli(
        data_dir, base_url, entra_id, ["Intent.Reader", "Intent.Author", "Intent.Executor"], [], None, 3600, False
    )
    return entra_id, {"Authorization": f"Bearer {token}"}


async def _run(
    base_url: str, bare_url: str, headers: dict[str, str], clients: list[int], seconds: float
) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        seeded = await client.post("/api/v1/intents", json=_definition(f"seed-{uuid.uuid4().hex[:8]}"))
        seeded.raise_for_status()
        for i in range(50):  # something to list
            filler = await client.post("/api/v1/intents", json=_definition(f"fill-{uuid.uuid4().hex[:6]}-{i}"))
            filler.raise_for_status()
    intent_id = seeded.json()["id"]
    run = uuid.uuid4().hex[:6]
    operations: dict[str, tuple[str, Operation]] = {
        "bare": (bare_url, lambda c, _: c.get("/api/bare")),
        "create": (base_url, lambda c, _: c.post("/api/v1/intents", json=_definition(_unique_name(run)))),
        "get": (base_url, lambda c, _: c.get(f"/api/v1/intents/{intent_id}")),
        "list": (base_url, lambda c, _: c.get("/api/v1/intents", params={"limit": 20})),
        "plan": (base_url, lambda c, _: c.post(f"/api/v1/intents/{intent_id}/plan")),
    }
    rows = []
    for name, (url, operation) in operations.items():
        for count in clients:
            row = {"operation": name, **await _drive(operation, count, seconds, url, headers)}
            rows.append(row)
            print(
                f"  {name:7s} clients={count:3d} {row['throughput_rps']:8.1f} rps  p50 {row['p50_ms']:7.2f} ms"
                f"  p95 {row['p95_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}",
                flush=True,
            )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    bare = {r["clients"]: r for r in rows if r["operation"] == "bare"}
    lines = [
        "| operation | clients | requests | rps | p50 ms | p95 ms | p99 ms | p50 / bare | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["p50_ms"] / bare[r["clients"]]["p50_ms"] if bare.get(r["clients"]) else float("nan")
        lines.append(
            f"| {r['operation']} | {r['clients']} | {r['requests']} | {r['throughput_rps']} | {r['p50_ms']} |"
            f" {r['p95_ms']} | {r['p99_ms']} | {ratio:.1f}x | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Start the hosts, run every cell, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each cell")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="qp-bench-") as tmp:
        data_dir = Path(tmp)
        # Telemetry as deployed, whatever the checkout's local.settings.json turns on to diagnose.
        telemetry = deployed_telemetry(data_dir)
        platform = DevhostProcess(
            PROJECT_ROOT, data_dir, free_port(), telemetry, data_dir / "platform.log", extra_args=("--seed-demo",)
        )
        # Its own task hub: one devhost leases a hub per database.
        bare = DevhostProcess(
            PROJECT_ROOT / "bench" / "bare_app",
            data_dir,
            free_port(),
            {"QP_TASK_HUB": "BenchBare", **telemetry},
            data_dir / "bare.log",
        )
        platform.start(timeout=120)
        try:
            bare.start(timeout=120)
            _, headers = _provision(platform.base_url, data_dir)
            print(f"registry benchmark: {args.seconds:.0f} s per cell, clients {clients}", flush=True)
            rows = asyncio.run(_run(platform.base_url, bare.base_url, headers, clients, args.seconds))
        finally:
            bare.stop()
            platform.stop()
    print()
    print(_table(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"registry-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"seconds_per_cell": args.seconds, "rows": rows}, indent=2))
    print(f"\nwrote {out.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
