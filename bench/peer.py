# intent_ref: platform.execution
"""The 5-step chain on the platform and on DBOS Transact, same Postgres, same run, interleaved rounds: the ratio."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.executions import (
    DEFAULT_WORKERS,
    RESULTS,
    SHAPES,
    Platform,
    _percentile,
    create_intent,
    run_batch,
    running_platform,
    summarise,
)
from devhost.child import PROJECT_ROOT

BENCH_VENV = PROJECT_ROOT / ".venv-bench"
REQUIREMENTS = PROJECT_ROOT / "requirements-bench.txt"
WORKLOAD = PROJECT_ROOT / "bench" / "peer_dbos_workload.py"
USAGE = """\
    make bench-env                                   # once: .venv-bench with requirements-bench.txt
    .venv/bin/python -m bench.peer [--rounds 3] [--concurrency 4 8] [--executions 24] [--peer-executions 200]

Starts Postgres, Azurite and a devhost as bench/executions.py does (default pool), then the peer in a child process
of .venv-bench (bench/peer_dbos_workload.py) over a database of its own in the same embedded Postgres, with the same
Azurite. Both run the same chain of 5 sequential steps (event, artifact, event, artifact, event): on the platform
the built-in event.emit (an event on the log kept in Postgres) and artifact.write (a blob in Azurite); on the peer a
DBOS workflow of 5 steps doing the same writes (a row committed in Postgres; a blob uploaded to Azurite). Each round
runs, for each concurrency, one batch of each side, the side that goes first alternating by round; every batch has
one warm-up execution first. Latency: platform = POST execute sent -> terminal status seen (client); peer = the
workflow call returning. Prints each batch, then a markdown table (medians over the rounds, each round in brackets)
and writes JSON (default bench/results/peer-<time>.json).
"""


def ensure_bench_env() -> Path:
    """The peer's interpreter; creates .venv-bench from requirements-bench.txt when it is missing."""
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".installed-stamp"
    if not stamp.exists() or stamp.stat().st_mtime < REQUIREMENTS.stat().st_mtime:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)  # noqa: S603
        subprocess.run(  # noqa: S603  # our own venv's pip and requirements file
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
            check=True,
        )
        stamp.touch()
    return python


class Peer:
    """The DBOS workload child process, answering one JSON line per batch."""

    def __init__(self, python: Path, platform: Platform) -> None:
        self.process = subprocess.Popen(  # noqa: S603  # our own interpreter and script
            [
                str(python),
                str(WORKLOAD),
                "--postgres-url",
                platform.postgres_url,
                "--blob-connection-string",
                platform.azurite.connection_string,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT / "bench",  # not the project root: the peer imports nothing of the project
        )
        if json.loads(self._read()).get("ready") is not True:
            raise RuntimeError("the peer did not start")

    def _read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the peer exited with {self.process.wait()}")
        return line

    def batch(self, executions: int, concurrency: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"executions": executions, "concurrency": concurrency}) + "\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self._read())
        return result

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.write(json.dumps({"quit": True}) + "\n")
            self.process.stdin.flush()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _platform_batch(platform: Platform, intent_id: str, executions: int, concurrency: int) -> dict[str, Any]:
    steps = SHAPES["chain5"]
    run = asyncio.run(run_batch(platform.base_url, platform.headers, steps, executions, concurrency, intent_id))
    summary = summarise(run, steps, concurrency, {})
    client = summary["latency"][0]
    return {
        "executions": summary["executions"],
        "errors": summary["executions"] - summary["succeeded"],
        "executions_per_s": summary["executions_per_s"],
        "p50_ms": client["p50_ms"],
        "p95_ms": client["p95_ms"],
        "server_p50_ms": summary["latency"][1]["p50_ms"],
    }


def _peer_batch(peer: Peer, executions: int, concurrency: int) -> dict[str, Any]:
    raw = peer.batch(executions, concurrency)
    latencies = raw["latencies_ms"]
    return {
        "executions": executions,
        "errors": raw["errors"],
        "executions_per_s": round(executions / raw["wall_s"], 2),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else float("nan"),
        "p95_ms": round(_percentile(latencies, 0.95), 2) if latencies else float("nan"),
    }


def _cell(values: list[float]) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:g}"
    return f"{round(middle, 2):g} ({' / '.join(f'{v:g}' for v in values)})"


def table(results: dict[int, list[dict[str, Any]]]) -> str:
    """Markdown rows per concurrency: both sides' executions/s and latency, and the ratio platform / peer."""
    lines = [
        "| concurrency | platform executions/s | platform p50 / p95 ms | peer executions/s | peer p50 / p95 ms |"
        " ratio platform / peer (target >= 0.5) |",
        "|---|---|---|---|---|---|",
    ]
    for concurrency, rounds in results.items():
        ours = [r["platform"] for r in rounds]
        theirs = [r["peer"] for r in rounds]
        ratios = [round(r["platform"]["executions_per_s"] / r["peer"]["executions_per_s"], 3) for r in rounds]

        def lat(side: list[dict[str, Any]]) -> str:
            return " / ".join(f"{statistics.median([s[k] for s in side]):g}" for k in ("p50_ms", "p95_ms"))

        lines.append(
            f"| {concurrency} | {_cell([s['executions_per_s'] for s in ours])} | {lat(ours)} "
            f"| {_cell([s['executions_per_s'] for s in theirs])} | {lat(theirs)} | {_cell(ratios)} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Start both sides, run the interleaved rounds, print the table and write the JSON."""
    parser = argparse.ArgumentParser(
        description=f"{__doc__}\n\n{USAGE}", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs both sides at every concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8], help="executions in flight at once")
    parser.add_argument("--executions", type=int, default=24, help="platform executions per batch (after a warm-up)")
    parser.add_argument("--peer-executions", type=int, default=200, help="peer executions per batch")
    parser.add_argument("--json-out", type=Path, default=None, help="default bench/results/peer-<time>.json")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="the devhost's worker processes (0: functions in the host)"
    )
    args = parser.parse_args()
    python = ensure_bench_env()
    results: dict[int, list[dict[str, Any]]] = {c: [] for c in args.concurrency}
    with running_platform(args.workers) as platform:
        peer = Peer(python, platform)
        try:
            intent_id = asyncio.run(_intent(platform))
            for r in range(args.rounds):
                for concurrency in args.concurrency:
                    sides = ["platform", "peer"] if r % 2 == 0 else ["peer", "platform"]
                    row: dict[str, Any] = {}
                    for side in sides:
                        row[side] = (
                            _platform_batch(platform, intent_id, args.executions, concurrency)
                            if side == "platform"
                            else _peer_batch(peer, args.peer_executions, concurrency)
                        )
                        print(f"round {r + 1}/{args.rounds}, {concurrency} at a time, {side}: {row[side]}", flush=True)
                    results[concurrency].append(row)
        finally:
            peer.close()
    print()
    print(table(results))
    out = args.json_out or RESULTS / f"peer-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"usage": USAGE, "rounds": results}, indent=2))
    print(f"wrote {out}")


async def _intent(platform: Platform) -> str:
    async with httpx.AsyncClient(base_url=platform.base_url, headers=platform.headers, timeout=60) as client:
        return await create_intent(client, SHAPES["chain5"])


if __name__ == "__main__":
    main()
