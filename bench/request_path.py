# intent_ref: platform.gateway
"""Where a registry request's time goes: stage timers inside a devhost, one client, sequential requests.

    .venv/bin/python -m bench.request_path [--requests 300]

Starts the platform in a devhost child (as bench/registry.py does, over an embedded Postgres in a temporary folder)
with bench/probes.py installed, provisions a tenant whose quotas never throttle, then sends GET and POST (create)
one at a time. Prints, per operation, the mean time per request of every stage (nested) and how often it ran, and
writes bench/results/request-path-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.folded import summarize
from bench.probes import KEY_PREFIX
from bench.registry import _definition, _provision
from devhost.child import PROJECT_ROOT, free_port

RESULTS = PROJECT_ROOT / "bench" / "results"


def _serve(stats: Path, devhost_args: list[str], with_probes: bool) -> int:
    """Child: install the probes, run the devhost until SIGTERM, then write the spans."""
    from bench import probes

    if with_probes:
        probes.install()
    from devhost.cli import main

    try:
        return main(devhost_args)
    finally:
        probes.dump(stats)


def _start(data_dir: Path, port: int, stats: Path, with_probes: bool) -> subprocess.Popen[bytes]:
    log = open(data_dir / "platform.log", "ab")  # handed to the child
    flags = [] if with_probes else ["--no-probes"]
    process = subprocess.Popen(  # our own interpreter and arguments
        [
            sys.executable,
            "-m",
            "bench.request_path",
            "serve",
            "--stats",
            str(stats),
            *flags,
            "--",
            "run",
            "--app",
            str(PROJECT_ROOT),
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--seed-demo",
        ],
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"devhost exited with {process.returncode}: see {data_dir / 'platform.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise TimeoutError("devhost did not listen")


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ms(pid: int, *, reaped: bool = False) -> float:
    """CPU time (user + system) a process has used, with its reaped children's when `reaped`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return used * 1000 / _TICKS


def _postgres_pids(data_dir: Path) -> list[int]:
    """The embedded server under `data_dir` and its backends."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            processes[int(entry.name)] = (cmdline, parent)
    server = [pid for pid, (cmdline, _) in processes.items() if "postgres" in cmdline and str(data_dir) in cmdline]
    return server + [pid for pid, (_, parent) in processes.items() if parent in server]


def _cpu_sample(host_pid: int, data_dir: Path) -> tuple[float, float]:
    postgres = 0.0
    for pid in _postgres_pids(data_dir):
        try:
            postgres += _cpu_ms(pid, reaped=True)
        except OSError:  # a backend that just ended
            continue
    return _cpu_ms(host_pid), postgres


def _sample(sampler: str | None, pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """Start the sampling profiler on the host process (folded stacks, 250 Hz), if one was given."""
    if sampler is None:
        return None
    return subprocess.Popen(
        [
            sampler,
            "record",
            "-p",
            str(pid),
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _drive(
    base_url: str,
    headers: dict[str, str],
    requests: int,
    host_pid: int,
    data_dir: Path,
    sampler: str | None,
    stamp: str,
) -> tuple[dict[str, list[float]], dict[str, tuple[float, float]]]:
    """Warm up, then time GET and create one at a time; each request carries an id the probes key on.

    Also returns, per operation, the CPU time per request of the host process and of the database, and with a
    sampler writes its folded stacks of the timed phase to bench/results.
    """
    latencies: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, tuple[float, float]] = {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        seeded = client.post("/api/v1/intents", json=_definition(f"seed-{uuid.uuid4().hex[:8]}"))
        seeded.raise_for_status()
        item = f"/api/v1/intents/{seeded.json()['id']}"
        calls: dict[str, Callable[[str], httpx.Response]] = {
            "get": lambda rid: client.get(item, headers={"X-Request-Id": rid}),
            "create": lambda rid: client.post(
                "/api/v1/intents", headers={"X-Request-Id": rid}, json=_definition(f"p-{uuid.uuid4().hex[:12]}")
            ),
        }
        for name, call in calls.items():
            for i in range(30):  # warm-up: not keyed, so the probes ignore it
                call(f"warm-{name}-{i}").raise_for_status()
            profiler = _sample(sampler, host_pid, RESULTS / f"request-path-{stamp}-{name}.folded")
            host_before, postgres_before = _cpu_sample(host_pid, data_dir)
            for i in range(requests):
                started = time.perf_counter()
                response = call(f"{KEY_PREFIX}{name}-{i}")
                latencies[name].append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
            host_after, postgres_after = _cpu_sample(host_pid, data_dir)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)  # it writes its output on interrupt
                profiler.wait(timeout=60)
            cpu[name] = ((host_after - host_before) / requests, (postgres_after - postgres_before) / requests)
    return latencies, cpu


def _breakdown(records: dict[str, list[list[Any]]], operation: str) -> list[dict[str, Any]]:
    """Per span path: mean ms per request, calls per request, and the self time not covered by child spans."""
    keys = [k for k in records if k.startswith(f"{KEY_PREFIX}{operation}-")]
    if not keys:
        return []
    totals: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for key in keys:
        for path, ms, cpu_ms in records[key]:
            totals[path] += ms
            cpu[path] += cpu_ms
            counts[path] += 1
    rows = []
    for path in sorted(totals):
        depth = path.count("/")
        children = sum(v for p, v in totals.items() if p.startswith(path + "/") and p.count("/") == depth + 1)
        rows.append(
            {
                "span": path,
                "ms_per_request": round(totals[path] / len(keys), 3),
                "self_ms_per_request": round((totals[path] - children) / len(keys), 3),
                "cpu_ms_per_request": round(cpu[path] / len(keys), 3),
                "calls_per_request": round(counts[path] / len(keys), 2),
            }
        )
    return rows


def _print(operation: str, latencies: list[float], cpu: tuple[float, float], rows: list[dict[str, Any]]) -> None:
    ordered = sorted(latencies)
    print(
        f"\n{operation}: {len(ordered)} requests, client p50 {statistics.median(ordered):.2f} ms, "
        f"mean {statistics.fmean(ordered):.2f} ms; CPU per request: host {cpu[0]:.2f} ms, Postgres {cpu[1]:.2f} ms"
    )
    print(f"  {'span':50s} {'ms/req':>8s} {'self':>8s} {'cpu':>8s} {'calls':>6s}")
    for row in rows:
        depth = row["span"].count("/")
        label = "  " * depth + row["span"].rsplit("/", 1)[-1]
        print(
            f"  {label:50s} {row['ms_per_request']:8.3f} {row['self_ms_per_request']:8.3f}"
            f" {row['cpu_ms_per_request']:8.3f} {row['calls_per_request']:6.2f}"
        )


def main() -> None:
    """Run the child devhost with probes, drive it, print and write the breakdown."""
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        # Child: serve --stats <file> -- <devhost arguments>
        separator = sys.argv.index("--")
        sys.exit(_serve(Path(sys.argv[3]), sys.argv[separator + 1 :], "--no-probes" not in sys.argv[:separator]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="timed requests per operation")
    parser.add_argument(
        "--no-probes",
        action="store_true",
        help="leave the stage timers out (CPU per request and samples without their overhead)",
    )
    parser.add_argument("--sampler", help="path of a sampling profiler executable to record the host with")
    options = parser.parse_args()
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qp-path-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        stats = data_dir / "spans.json"
        process = _start(data_dir, port, stats, not options.no_probes)
        try:
            _, headers = _provision(f"http://127.0.0.1:{port}", data_dir)
            latencies, cpu = _drive(
                f"http://127.0.0.1:{port}", headers, options.requests, process.pid, data_dir, options.sampler, stamp
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        records = {} if options.no_probes else json.loads(stats.read_text())
    result = {}
    for operation, values in latencies.items():
        rows = _breakdown(records, operation)
        _print(operation, values, cpu[operation], rows)
        result[operation] = {
            "client_p50_ms": round(statistics.median(values), 2),
            "host_cpu_ms_per_request": round(cpu[operation][0], 2),
            "postgres_cpu_ms_per_request": round(cpu[operation][1], 2),
            "spans": rows,
        }
        folded = RESULTS / f"request-path-{stamp}-{operation}.folded"
        if folded.exists():
            result[operation]["samples"] = summary = summarize(folded)
            print(f"  samples: {summary['busy_samples']} busy, {summary['waiting_samples']} waiting; busy, self:")
            for name, percent in summary["self"][:15]:  # type: ignore[index]
                print(f"    {percent:5.1f}%  {name}")
    out = RESULTS / f"request-path-{stamp}.json"
    out.write_text(json.dumps({"requests": options.requests, "operations": result}, indent=2))
    print(f"\nwrote {out.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
