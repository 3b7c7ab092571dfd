# intent_ref: platform.telemetry
"""What telemetry costs: a request and a cold start with it off, writing the local file, and exporting to Azure
Monitor (a local ingestion endpoint that accepts everything, and one that is down), side by side in one run.

    .venv/bin/python -m bench.telemetry [--seconds 3] [--rounds 3] [--clients 1,8]

Starts one devhost per mode over one embedded Postgres, then drives GET and create of an intent against each in
interleaved rounds (the machine is shared: the rounds spread its noise over every mode alike). The cold start is
the import of function_app.py in a fresh interpreter, five times per mode. Prints a table and writes
bench/results/telemetry-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.registry import _definition, _drive, _provision
from devhost.child import PROJECT_ROOT, DevhostProcess, free_port

RESULTS = PROJECT_ROOT / "bench" / "results"
_EXPORT = {"APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "OTEL_BSP_SCHEDULE_DELAY": "1000"}


class _Accepting(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802  # the handler's protocol names it so
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"itemsReceived": 0, "itemsAccepted": 0, "errors": []}')

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def _ingestion() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accepting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _modes(port: int, data_dir: Path) -> dict[str, dict[str, str]]:
    def monitor(p: int) -> str:
        return f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=http://127.0.0.1:{p}/"

    return {
        "off": {"QP_TELEMETRY_FILE": "", "APPLICATIONINSIGHTS_CONNECTION_STRING": ""},
        "file": {
            "QP_TELEMETRY_FILE": str(data_dir / "telemetry.jsonl"),
            "APPLICATIONINSIGHTS_CONNECTION_STRING": "",
            "QP_TELEMETRY_SQL_SPANS": "true",
        },
        "azure-monitor": {"APPLICATIONINSIGHTS_CONNECTION_STRING": monitor(port), **_EXPORT},
        "azure-monitor, endpoint down": {"APPLICATIONINSIGHTS_CONNECTION_STRING": monitor(free_port()), **_EXPORT},
        "azure-monitor with SQL spans": {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": monitor(port),
            "QP_TELEMETRY_SQL_SPANS": "true",
            **_EXPORT,
        },
    }


def _cold_start(env: dict[str, str]) -> float:
    """Seconds to import function_app.py (settings, telemetry set-up, the gateway app) in a fresh interpreter."""
    code = "import time; t = time.perf_counter(); import function_app; print(time.perf_counter() - t)"
    settings = {
        "QP_DATABASE_URL": "postgresql://bench@127.0.0.1:1/bench",
        "QP_DATABASE_CONTROL_URL": "postgresql://bench@127.0.0.1:1/bench",
        "QP_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true",
        "QP_TELEMETRY_FILE": "",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "",
    }
    # Its own temporary folder, removed after: the exporter's retry store (1-4 MB) must not pile up in the system's.
    with tempfile.TemporaryDirectory(prefix="qp-cold-") as tmp:
        done = subprocess.run(  # noqa: S603  # our own interpreter and code
            [sys.executable, "-c", code],
            cwd=PROJECT_ROOT,
            env={**os.environ, **settings, **env, "TMPDIR": tmp},
            capture_output=True,
            text=True,
            check=True,
        )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Start a host per mode, drive the rounds, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each cell")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the modes")
    parser.add_argument("--clients", default="1,8", help="comma-separated concurrency levels")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qp-bench-") as tmp, _ingestion() as port:
        data_dir = Path(tmp)
        modes = _modes(port, data_dir)
        cold = {mode: [_cold_start(env) for _ in range(5)] for mode, env in modes.items()}
        hosts = {
            mode: DevhostProcess(
                PROJECT_ROOT,
                data_dir,
                free_port(),
                {**env, "QP_TASK_HUB": f"BenchTelemetry{n}"},
                data_dir / f"platform-{n}.log",
                extra_args=("--seed-demo",) if n == 0 else (),
            )
            for n, (mode, env) in enumerate(modes.items())
        }
        try:
            for host in hosts.values():
                host.start(timeout=120)
            # A token names the host that issued it: each host gets its own bench tenant and intent.
            access = {mode: _provision(host.base_url, data_dir)[1] for mode, host in hosts.items()}
            intents = {mode: asyncio.run(_seed(host.base_url, access[mode])) for mode, host in hosts.items()}
            for round_no in range(args.rounds):
                for mode, host in hosts.items():
                    headers, intent = access[mode], intents[mode]
                    for count in clients:
                        for operation in ("get", "create"):
                            row = asyncio.run(_cell(host.base_url, headers, intent, operation, count, args.seconds))
                            rows.append({"mode": mode, "round": round_no, "operation": operation, **row})
                print(f"round {round_no + 1} of {args.rounds} done", flush=True)
        finally:
            for host in hosts.values():
                if host.process is not None:
                    host.stop()
    summary = _summary(rows, cold)
    print(_table(summary))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"telemetry-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"seconds_per_cell": args.seconds, "rows": rows, "summary": summary}, indent=2))
    print(f"\nwrote {out.relative_to(PROJECT_ROOT)}")


async def _seed(base_url: str, headers: dict[str, str]) -> str:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        created = await client.post("/api/v1/intents", json=_definition(f"tel-{uuid.uuid4().hex[:8]}"))
        created.raise_for_status()
        return str(created.json()["id"])


async def _cell(
    base_url: str, headers: dict[str, str], intent: str, operation: str, clients: int, seconds: float
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    if operation == "get":
        return await _drive(lambda c, _: c.get(f"/api/v1/intents/{intent}"), clients, seconds, base_url, headers)
    return await _drive(
        lambda c, i: c.post("/api/v1/intents", json=_definition(f"t{run}-{i}")), clients, seconds, base_url, headers
    )


def _summary(rows: list[dict[str, Any]], cold: dict[str, list[float]]) -> list[dict[str, Any]]:
    out = []
    for mode, starts in cold.items():
        for operation in ("get", "create"):
            for count in sorted({r["clients"] for r in rows}):
                cells = [r for r in rows if (r["mode"], r["operation"], r["clients"]) == (mode, operation, count)]
                out.append(
                    {
                        "mode": mode,
                        "operation": operation,
                        "clients": count,
                        "p50_ms": round(statistics.median(r["p50_ms"] for r in cells), 2),
                        "p95_ms": round(statistics.median(r["p95_ms"] for r in cells), 2),
                        "rps": round(statistics.median(r["throughput_rps"] for r in cells), 1),
                        "errors": sum(r["errors"] for r in cells),
                        "cold_start_s": round(statistics.median(starts), 2),
                    }
                )
    return out


def _table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | operation | clients | p50 ms | p95 ms | req/s | errors | import of function_app.py, s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['mode']} | {r['operation']} | {r['clients']} | {r['p50_ms']} | {r['p95_ms']} | {r['rps']} |"
            f" {r['errors']} | {r['cold_start_s']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
