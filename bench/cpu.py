# intent_ref: platform.execution
"""CPU per execution, split by process (devhost host, its worker processes, Postgres, Azurite, this client).

    .venv/bin/python -m bench.cpu [--executions 80] [--concurrency 8] [--rounds 2] [--shape dag5] [--workers 2]
                                  [--telemetry deployed|off|sql-spans]

On a shared machine executions/s moves with whatever else runs; the CPU an execution costs moves much less, and it
says where a saving has to come from: throughput is about the machine's cores divided by it. Starts the platform as
bench/executions.py does, runs a warm-up batch, then `--rounds` batches, and for each prints the executions/s and
the CPU milliseconds per execution of every process group, read from /proc before and after the batch (user +
system time; children that exited during the batch are not counted, and none do); then Postgres's part by the
login each backend serves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import defaultdict
from pathlib import Path

from bench.executions import DEFAULT_WORKERS, SHAPES, create_intent, run_batch, running_platform
from bench.executions import _client as bench_client

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
GROUPS = ("host", "workers", "postgres", "azurite", "client")
TELEMETRY = {
    "deployed": {},  # running_platform's own: exported, no span per SQL statement
    "off": {"QP_TELEMETRY_FILE": ""},
    "sql-spans": {"QP_TELEMETRY_SQL_SPANS": "true"},  # what an operator turns on to diagnose
}


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(command name, parent pid, CPU seconds) of one process; None when it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def _postgres_login(pid: str) -> str:
    """The login a Postgres backend serves (`qp_app`, `qp_owner`, ...), or `background` for the server's own."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "background"
    # A backend's process title is "postgres: <login> <database> <client> <state>".
    words = title.removeprefix("postgres:").split()
    return words[0] if title.startswith("postgres: ") and words and words[0].startswith("qp_") else "background"


def postgres_by_login() -> dict[str, float]:
    """CPU seconds so far of the Postgres processes, by the login each backend serves (`background` for the rest)."""
    logins: dict[str, float] = defaultdict(float)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        stat = _stat(pid)
        if stat is not None and stat[0].startswith("postgres"):
            logins[_postgres_login(pid)] += stat[2]
    return dict(logins)


def cpu_by_group(host_pid: int) -> dict[str, float]:
    """CPU seconds so far of the host, its Python worker processes, every Postgres and Node process, and this one."""
    groups: dict[str, float] = defaultdict(float)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        stat = _stat(pid)
        if stat is None:
            continue
        name, parent, seconds = stat
        if int(pid) == host_pid:
            groups["host"] += seconds
        elif parent == host_pid and name.startswith("python"):
            groups["workers"] += seconds
        elif name.startswith("postgres"):
            groups["postgres"] += seconds
        elif name.startswith("node"):
            groups["azurite"] += seconds
        elif int(pid) == os.getpid():
            groups["client"] += seconds
    return dict(groups)


async def _measure(base_url: str, headers: dict[str, str], host_pid: int, args: argparse.Namespace) -> None:
    steps = SHAPES[args.shape]
    async with bench_client(base_url, headers, 4) as client:
        intent_id = await create_intent(client, steps)
    await run_batch(base_url, headers, steps, max(args.concurrency * 2, 8), args.concurrency, intent_id)  # warm-up
    print("| round | executions/s | CPU ms per execution | host | workers | postgres | azurite | client |")
    print("|---|---|---|---|---|---|---|---|")
    splits: list[dict[str, float]] = []
    for round_no in range(1, args.rounds + 1):
        before, postgres_before = cpu_by_group(host_pid), postgres_by_login()
        run = await run_batch(base_url, headers, steps, args.executions, args.concurrency, intent_id)
        after, postgres_after = cpu_by_group(host_pid), postgres_by_login()
        per = {group: (after.get(group, 0.0) - before.get(group, 0.0)) * 1000 / args.executions for group in after}
        splits.append(
            {
                login: (seconds - postgres_before.get(login, 0.0)) * 1000 / args.executions
                for login, seconds in postgres_after.items()
            }
        )
        cells = " | ".join(
            f"{per.get(group, 0.0):.1f}" for group in ("host", "workers", "postgres", "azurite", "client")
        )
        rate = args.executions / run["wall_s"]
        print(f"| {round_no} | {rate:.2f} | {sum(per.values()):.1f} | {cells} |", flush=True)
    # Whose statements the Postgres column is: the app's transactions (qp_app), the devhost's Durable store and
    # Event Hubs log (qp_owner), the control plane (qp_control), and the server's own processes.
    print("\nPostgres CPU ms per execution, by login:")
    for round_no, split in enumerate(splits, start=1):
        print(f"  round {round_no}: " + ", ".join(f"{login} {ms:.1f}" for login, ms in sorted(split.items())))


def main() -> None:
    """Start the platform, then print executions/s and CPU per execution by process group for each round."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="dag5")
    parser.add_argument("--executions", type=int, default=80, help="executions per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="the devhost's worker processes")
    parser.add_argument("--telemetry", choices=sorted(TELEMETRY), default="deployed")
    args = parser.parse_args()
    with running_platform(args.workers, TELEMETRY[args.telemetry]) as platform:
        process = platform.process.process
        assert process is not None  # started by running_platform
        print(
            f"{args.rounds} rounds of {args.executions} executions ({args.shape}), {args.concurrency} at a time, "
            f"telemetry {args.telemetry}"
        )
        asyncio.run(_measure(platform.base_url, platform.headers, process.pid, args))


if __name__ == "__main__":
    main()
