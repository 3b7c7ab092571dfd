# intent_ref: platform.hardening
"""The CPU the API spends answering hostile request bodies on the write routes, beside a small valid body.

    .venv/bin/python -m bench.hostile_bodies [--repeat 3] [--routes create-intent,execute] [--bodies deep-nesting]

Starts the platform as bench/executions.py does (devhost, its worker processes, embedded Postgres and Azurite in a
temporary folder, telemetry as deployed), provisions a tenant whose quotas never throttle, then sends each body to
each route `--repeat` times with httpx, one request at a time. Before each request it waits until the host and its
workers are idle again (an accepted execute runs its execution after answering), then reads their CPU from /proc
around the request: on-CPU nanoseconds of every thread (/proc/<pid>/task/<tid>/schedstat), or the 10 ms tick
counters of /proc/<pid>/stat when a thread ended in between. A cell is the median of its repeats and the status it
answered. Bodies (as the 2026-12-06 measurement had them): 100,000 unknown members (~1 MB), one 1 MB string, a
100,000-element array, arrays nested to the depth limit repeated to 1 MB, 1e300 numbers to 1 MB, one key repeated
to 1 MB; each but the first placed in a field of the route's otherwise valid body. The `valid` column is that
valid body itself, the baseline of the same run. Postgres's and Azurite's CPU is not counted. Prints a markdown
table and writes bench/results/hostile-bodies-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.executions import RESULTS, _provision, running_platform

MB = 1_000_000
ROLES = ["Intent.Reader", "Intent.Author", "Intent.Executor", "Intent.Approver", "Tenant.Admin"]
DEFINITION: dict[str, Any] = {
    "target": "staging",
    "steps": [{"id": "a", "action": "event.emit", "type": "bench.tick", "data": {"i": 1}}],
}
# Built once: each is placed raw into a route's body at the hostile field.
LONG = '"' + "a" * MB + '"'
ARRAY = "[" + ",".join(["0"] * 100_000) + "]"
NEST = "[" + ",".join(["[" * 120 + "]" * 120] * (MB // 242)) + "]"
EXPS = "[" + ",".join(["1e300"] * (MB // 6)) + "]"
DUPS = "{" + ",".join(['"a":0'] * (MB // 6)) + "}"
HEADINGS = {
    "valid": "valid (baseline)",
    "unknown-members": "100,000 unknown members",
    "long-string": "one long string",
    "array-100k": "100,000-element array",
    "deep-nesting": "deep nesting",
    "huge-exponents": "huge exponents",
    "duplicate-keys": "duplicate keys",
}
BODY_KINDS = tuple(HEADINGS)
IDLE_WINDOW_S = 0.25
SETTLE_TIMEOUT_S = 20.0
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass
class Route:
    """One write route: its valid body and the field a hostile value replaces (absent fields are added)."""

    name: str
    method: str
    path: str
    valid: dict[str, Any]
    slot: list[str]
    headers: dict[str, str] = field(default_factory=dict)  # If-Match follows the intent's versions
    fresh_name: bool = False  # a create: a name taken by the last repeat would answer 409, not create

    def valid_body(self) -> bytes:
        """The small valid body, with a name of its own when the route creates by name."""
        body = {**self.valid, "name": f"hb-{uuid.uuid4().hex[:12]}"} if self.fresh_name else self.valid
        return json.dumps(body).encode()


def unknown_members(prefix: dict[str, Any]) -> bytes:
    """The valid body followed by 100,000 members no model declares."""
    members = ",".join(f'"{i}":0' for i in range(100_000))
    return (json.dumps(prefix)[:-1] + ("," if prefix else "") + members + "}").encode()


def put_at(prefix: dict[str, Any], path: list[str], raw: str) -> bytes:
    """`prefix` as JSON with the raw JSON text `raw` at `path` (a marker string replaced, so `raw` is never parsed
    here: duplicate keys and huge exponents reach the server as written)."""
    doc = json.loads(json.dumps(prefix))
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = "@@MARK@@"
    return json.dumps(doc).replace('"@@MARK@@"', raw).encode()


def bodies(route: Route) -> dict[str, Callable[[], bytes]]:
    """Every body kind for one route, the valid baseline first; the hostile ones built once, the valid one per
    request."""
    hostile = {
        "unknown-members": unknown_members(route.valid),
        "long-string": put_at(route.valid, route.slot, LONG),
        "array-100k": put_at(route.valid, route.slot, ARRAY),
        "deep-nesting": put_at(route.valid, route.slot, NEST),
        "huge-exponents": put_at(route.valid, route.slot, EXPS),
        "duplicate-keys": put_at(route.valid, route.slot, DUPS),
    }
    built: dict[str, Callable[[], bytes]] = {"valid": route.valid_body}
    built.update({kind: _constant(body) for kind, body in hostile.items()})
    return built


def _constant(body: bytes) -> Callable[[], bytes]:
    """A body maker that hands back the same bytes every time."""
    return lambda: body


@dataclass
class Snapshot:
    """CPU of the host and its worker processes at one moment, read two ways."""

    ticks_s: float  # /proc/<pid>/stat utime+stime: whole processes, dead threads included, 10 ms steps
    thread_ns: dict[tuple[int, int], int]  # (pid, tid) -> on-CPU ns from schedstat: live threads only, exact


def _host_group(host_pid: int) -> list[int]:
    """The host and its Python worker processes (bench/cpu.py's `host` and `workers` groups)."""
    pids = [host_pid]
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        if parent == host_pid and name.startswith("python"):
            pids.append(int(entry))
    return pids


def snapshot(pids: list[int]) -> Snapshot:
    """Read the CPU of `pids` from /proc (processes or threads that vanish while read are left out)."""
    ticks = 0.0
    threads: dict[tuple[int, int], int] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                threads[(pid, int(tid))] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return Snapshot(ticks, threads)


def cpu_ms(before: Snapshot, after: Snapshot) -> tuple[float, str]:
    """CPU ms between two snapshots and its source: schedstat when every thread lived through the interval (new
    threads start from zero, so they count in full), else the coarse tick counters."""
    if before.thread_ns.keys() <= after.thread_ns.keys():
        spent = sum(ns - before.thread_ns.get(key, 0) for key, ns in after.thread_ns.items())
        return spent / 1e6, "schedstat"
    return (after.ticks_s - before.ticks_s) * 1000, "ticks"


def idle_rate(pids: list[int], seconds: float = 2.0) -> float:
    """The host group's background CPU, ms per second (pollers, timers): what idle looks like."""
    before = snapshot(pids)
    time.sleep(seconds)
    return cpu_ms(before, snapshot(pids))[0] / seconds


def settle(pids: list[int], idle_ms_per_s: float) -> None:
    """Wait until the host group spends no more than its idle rate (plus a little) over a short window, so a
    previous request's after-work (an accepted execution running) is not counted in the next request."""
    ceiling = idle_ms_per_s * IDLE_WINDOW_S * 1.5 + 2.0
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    previous = snapshot(pids)
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW_S)
        current = snapshot(pids)
        if cpu_ms(previous, current)[0] <= ceiling:
            return
        previous = current


def _provision_tenant(base_url: str, data_dir: Path) -> dict[str, str]:
    """A tenant whose quotas never throttle (no 429 in a cell) and a token with every role the routes ask for."""
    headers = _provision(base_url, data_dir, name="hostile", roles=ROLES, modules=["event"])
    return {**headers, "Content-Type": "application/json"}


def routes(client: httpx.Client) -> list[Route]:
    """The write routes of the 2026-12-06 measurement, over one intent created here; approvals and the completion
    name an execution that does not exist (what an attacker without one sends), so their valid body is refused
    too, after the body is read."""
    created = client.post("/api/v1/intents", json={"name": "hostile-target", "definition": DEFINITION})
    created.raise_for_status()
    intent, etag = created.json()["id"], created.headers["ETag"]
    execution = str(uuid.uuid4())
    return [
        Route(
            "create intent",
            "POST",
            "/api/v1/intents",
            {"name": "hb-new", "definition": DEFINITION},
            ["definition", "x"],
            fresh_name=True,
        ),
        Route(
            "update intent",
            "PUT",
            f"/api/v1/intents/{intent}",
            {"name": "hostile-target", "definition": DEFINITION},
            ["definition", "x"],
            {"If-Match": etag},
        ),
        Route("execute", "POST", f"/api/v1/intents/{intent}/execute", {"input": {}}, ["input", "x"]),
        # An event type nothing emits: a subscription the baseline creates never delivers in the background.
        Route(
            "webhooks",
            "POST",
            "/api/v1/webhooks",
            {"url": "https://hooks.example.com/x", "event_types": ["bench.never"]},
            ["event_types"],
        ),
        Route(
            "approvals",
            "POST",
            f"/api/v1/executions/{execution}/approvals/s1",
            {"decision": "approve"},
            ["comment"],
        ),
        Route(
            "complete",
            "POST",
            f"/api/v1/executions/{execution}/steps/s1/complete",
            {"task_token": "qpt1.x.y"},
            ["output"],
        ),
    ]


def measure(
    client: httpx.Client,
    pids: Callable[[], list[int]],
    idle_ms_per_s: float,
    selected: list[Route],
    kinds: list[str],
    repeat: int,
) -> list[dict[str, Any]]:
    """Every (route, body) cell, `repeat` requests each, one at a time."""
    rows = []
    for route in selected:
        for kind, make_body in bodies(route).items():
            if kind not in kinds:
                continue
            body = make_body()
            samples: list[float] = []
            sources: list[str] = []
            statuses: list[int] = []
            walls: list[float] = []
            answer = ""
            for _ in range(repeat):
                if kind == "valid":
                    body = make_body()
                group = pids()  # a worker restarted by the host is picked up
                settle(group, idle_ms_per_s)
                before = snapshot(group)
                started = time.perf_counter()
                response = client.request(route.method, route.path, content=body, headers=route.headers)
                walls.append((time.perf_counter() - started) * 1000)
                spent, source = cpu_ms(before, snapshot(group))
                samples.append(spent)
                sources.append(source)
                statuses.append(response.status_code)
                answer = response.text[:200]
                if route.method == "PUT" and response.is_success and "ETag" in response.headers:
                    route.headers["If-Match"] = response.headers["ETag"]  # the next repeat updates the new version
            row = {
                "route": route.name,
                "body": kind,
                "bytes": len(body),
                "status": statuses[-1],
                "statuses": statuses,
                "cpu_ms": round(statistics.median(samples), 1),
                "cpu_ms_all": [round(s, 1) for s in samples],
                "sources": sources,
                "wall_ms_all": [round(w, 1) for w in walls],
                "answer": answer,
            }
            rows.append(row)
            print(
                f"  {route.name:14s} {kind:16s} {len(body):8d} B  {row['status']}  {row['cpu_ms']:8.1f} ms CPU"
                f"  (all {row['cpu_ms_all']}, {','.join(sorted(set(sources)))})",
                flush=True,
            )
    return rows


def table(rows: list[dict[str, Any]], kinds: list[str]) -> str:
    """Markdown: one row per route, one column per body; a cell is CPU ms (status), mixed statuses all shown."""
    lines = [
        "| route | " + " | ".join(HEADINGS[k] for k in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    by_cell = {(r["route"], r["body"]): r for r in rows}
    for name in dict.fromkeys(r["route"] for r in rows):
        cells = []
        for kind in kinds:
            row = by_cell.get((name, kind))
            if row is None:
                cells.append("")
                continue
            statuses = "/".join(str(s) for s in dict.fromkeys(row["statuses"]))
            cells.append(f"{row['cpu_ms']:.1f} ({statuses})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Start the platform, measure every cell, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="requests per cell; the cell is their median")
    parser.add_argument("--routes", default="", help="comma-separated route names, dashed (default: all)")
    parser.add_argument("--bodies", default="", help=f"comma-separated of {','.join(BODY_KINDS)} (default: all)")
    args = parser.parse_args()
    kinds = [k for k in BODY_KINDS if not args.bodies or k in args.bodies.split(",")]
    started_at = datetime.now(UTC)
    with running_platform() as platform:
        process = platform.process.process
        assert process is not None  # started by running_platform
        host_pid = process.pid
        headers = _provision_tenant(platform.base_url, platform.data_dir)
        with httpx.Client(base_url=platform.base_url, headers=headers, timeout=120) as client:
            wanted = args.routes.split(",") if args.routes else []
            selected = [r for r in routes(client) if not wanted or r.name.replace(" ", "-") in wanted]
            idle = idle_rate(_host_group(host_pid))
            print(
                f"hostile bodies: {len(selected)} routes x {len(kinds)} bodies x {args.repeat} requests; host group"
                f" idle {idle:.1f} ms CPU per s",
                flush=True,
            )
            rows = measure(client, lambda: _host_group(host_pid), idle, selected, kinds, args.repeat)
    print()
    print(table(rows, kinds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"hostile-bodies-{started_at:%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {
                "started_at": started_at.isoformat(),
                "repeat": args.repeat,
                "idle_ms_per_s": round(idle, 2),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
