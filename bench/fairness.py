# intent_ref: platform.execution
"""What one tenant's burst of executions does to another tenant's: the quiet tenant's latency alone, then while
the busy one has a burst in flight, side by side in one run.

    .venv/bin/python -m bench.fairness [--burst 100] [--quiet 8] [--rounds 2] [--busy-max-concurrent N]
                                       [--busy-width N [--busy-slow S]]

Starts the platform as bench/executions.py does and provisions two tenants: `busy`, whose quotas never throttle
its requests but whose concurrent executions are the platform's default (QP_DEFAULT_MAX_CONCURRENT_EXECUTIONS) or
`--busy-max-concurrent`, and `quiet`. Each round: `--quiet` executions of the 5-step intent by the quiet tenant
one after another (alone), then the busy tenant POSTs `--burst` executions at once (a 429 is retried after its
Retry-After) and, half a second later, the quiet tenant runs `--quiet` executions one after another again while
the burst drains. With `--busy-width N` the busy tenant's intent is one `event.emit` and then a level of N steps
(half 1 s `wait`, half `event.emit`) instead of the 5-step intent; with `--busy-slow S` as well, the level is N
`http.request` steps to an endpoint of the bench's own that answers after S seconds (built-in module work that holds
its thread, as a tenant calling a slow service does). Prints
the quiet tenant's latency (POST execute sent -> terminal event seen on its stream) in both phases, p50 and worst,
and of the worst how long its start took to answer and how long after its creation its first step started; when
the quiet tenant's runs beside the burst were done (from the burst's first POST: one run stalled for the whole burst
leaves the others to run after it, which a median alone hides); and the burst's drain time (its first POST -> the
last of its executions ended).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from bench.executions import (
    BENCH_MODULES,
    BENCH_ROLES,
    DAG5,
    TERMINAL,
    UNTHROTTLED,
    _ms,
    _provision,
    _run_one,
    _ts,
    _until_terminal,
    add_dispatch_wait_option,
    create_intent,
    dispatch_wait_settings,
    retry_after_s,
    running_platform,
)

Run = tuple[float, float, float]
"""One quiet execution: ms to the start's answer, ms to its terminal event, ms from its creation to its first step
starting (server clocks)."""


async def _quiet_runs(client: httpx.AsyncClient, intent_id: str, count: int) -> list[Run]:
    """`count` executions, one after another."""
    runs = []
    for _ in range(count):
        started = time.perf_counter()
        accepted = await client.post(f"/api/v1/intents/{intent_id}/execute", json={"input": {}})
        accepted.raise_for_status()
        answered = time.perf_counter()
        execution_id = str(accepted.json()["execution_id"])
        await _until_terminal(client, execution_id, started)
        ended = time.perf_counter()
        detail = (await client.get(f"/api/v1/executions/{execution_id}")).json()
        first = min(_ts(a["started_at"]) for step in detail["steps"] for a in step["attempts"])
        runs.append(((answered - started) * 1000, (ended - started) * 1000, _ms(_ts(detail["created_at"]), first)))
    return runs


async def _start(client: httpx.AsyncClient, intent_id: str) -> str:
    key = {"Idempotency-Key": f"fairness-{uuid.uuid4().hex}"}
    while True:
        answer = await client.post(f"/api/v1/intents/{intent_id}/execute", json={"input": {}}, headers=key)
        if answer.status_code in (429, 503):
            await asyncio.sleep(retry_after_s(answer))
            continue
        answer.raise_for_status()
        return str(answer.json()["execution_id"])


async def _drained(client: httpx.AsyncClient, ids: list[str]) -> None:
    """Until every one of `ids` has ended (read once the quiet runs are done)."""
    for execution_id in ids:
        while (await client.get(f"/api/v1/executions/{execution_id}")).json()["status"] not in TERMINAL:
            await asyncio.sleep(0.1)


def fan_out(width: int) -> list[dict[str, Any]]:
    """One `event.emit`, then `width` steps after it at once: 1 s waits and `event.emit` steps, alternating."""
    level: list[dict[str, Any]] = [
        {"id": f"w{i:03d}", "action": "wait", "seconds": 1, "depends_on": ["first"]}
        if i % 2 == 0
        else {"id": f"e{i:03d}", "action": "event.emit", "type": "bench.fan", "data": {"i": i}, "depends_on": ["first"]}
        for i in range(width)
    ]
    return [{"id": "first", "action": "event.emit", "type": "bench.fan", "data": {"i": -1}}, *level]


def slow_fan_out(width: int, url: str) -> list[dict[str, Any]]:
    """One `event.emit`, then `width` `http.request` steps to `url` after it at once."""
    level = [
        {"id": f"h{i:03d}", "action": "http.request", "method": "GET", "url": url, "depends_on": ["first"]}
        for i in range(width)
    ]
    return [{"id": "first", "action": "event.emit", "type": "bench.fan", "data": {"i": -1}}, *level]


@contextlib.contextmanager
def slow_endpoint(seconds: float) -> Iterator[str]:
    """A URL on 127.0.0.1 that answers 200 after `seconds`, to as many callers at once as come."""

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  # the handler's required name
            time.sleep(seconds)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # the base class's signature
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slow"
    finally:
        server.shutdown()
        server.server_close()


async def _round(
    base_url: str, busy: dict[str, str], quiet: dict[str, str], burst: int, count: int, busy_steps: list[dict[str, Any]]
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=burst + 8, max_keepalive_connections=burst + 8)
    async with (
        httpx.AsyncClient(base_url=base_url, headers=busy, limits=limits, timeout=120) as busy_client,
        httpx.AsyncClient(base_url=base_url, headers=quiet, timeout=120) as quiet_client,
    ):
        busy_intent = await create_intent(busy_client, busy_steps)
        quiet_intent = await create_intent(quiet_client, DAG5)
        await _run_one(busy_client, busy_intent)  # warm-up of both tenants' paths
        await _run_one(quiet_client, quiet_intent)
        alone = await _quiet_runs(quiet_client, quiet_intent, count)
        started = time.perf_counter()
        starts = asyncio.gather(*(_start(busy_client, busy_intent) for _ in range(burst)))
        await asyncio.sleep(0.5)
        during = await _quiet_runs(quiet_client, quiet_intent, count)
        ids = await starts
        quiet_done = time.perf_counter() - started
        await _drained(busy_client, ids)
        drained = time.perf_counter() - started
    return {"alone_ms": alone, "during_ms": during, "quiet_done_s": quiet_done, "burst_drained_s": drained}


def _cell(runs: list[Run]) -> str:
    worst = max(runs, key=lambda run: run[1])
    return (
        f"{statistics.median(run[1] for run in runs):.0f} / {worst[1]:.0f} "
        f"(start answered in {worst[0]:.0f}, first step after {worst[2]:.0f})"
    )


def main() -> None:
    """Start the platform, run the rounds, print the quiet tenant's latency alone and beside the burst."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=100, help="executions the busy tenant starts at once")
    parser.add_argument("--quiet", type=int, default=8, help="executions the quiet tenant runs in each phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--busy-max-concurrent",
        type=int,
        default=None,
        help="the busy tenant's max_concurrent_executions quota (default: the platform's default)",
    )
    parser.add_argument(
        "--busy-width", type=int, default=None, help="the busy tenant runs a fan-out of this many steps (see above)"
    )
    parser.add_argument(
        "--busy-slow",
        type=float,
        default=None,
        help="with --busy-width: the fan-out's steps are HTTP calls answered after this many seconds",
    )
    add_dispatch_wait_option(parser)
    args = parser.parse_args()
    settings = dispatch_wait_settings(args)
    # Requests never throttled; concurrent executions at the platform's default unless the busy tenant's is given.
    unthrottled = {name: limit for name, limit in UNTHROTTLED.items() if name != "max_concurrent_executions"}
    busy_quotas = dict(unthrottled)
    if args.busy_max_concurrent is not None:
        busy_quotas["max_concurrent_executions"] = args.busy_max_concurrent
    with running_platform(settings=settings) as platform, slow_endpoint(args.busy_slow or 0.0) as slow_url:
        busy = _provision(
            platform.base_url,
            platform.data_dir,
            name="busy",
            quotas=busy_quotas,
            modules=(*BENCH_MODULES, "wait", "http"),
            roles=(*BENCH_ROLES, "Tenant.Admin"),
        )
        # Its calls go to the bench's endpoint on 127.0.0.1, which the SSRF guard lets through only if allow-listed.
        httpx.patch(
            f"{platform.base_url}/api/v1/tenant", json={"settings": {"allowed_hosts": ["127.0.0.1"]}}, headers=busy
        ).raise_for_status()
        quiet = _provision(platform.base_url, platform.data_dir, name="quiet", quotas=unthrottled)
        busy_shape = f"a fan-out of {args.busy_width}" if args.busy_width else "the 5-step intent"
        if args.busy_width and args.busy_slow:
            busy_shape += f" HTTP calls answered after {args.busy_slow:g} s"
        print(
            f"{args.burst} executions of {busy_shape} by the busy tenant at once; the quiet tenant's 5-step"
            " executions, one at a time"
        )
        print(
            "| round | quiet alone: p50 / max ms | quiet beside the burst: p50 / max ms | quiet's runs done, s"
            " | burst drained, s |"
        )
        print("|---|---|---|---|---|")
        for number in range(1, args.rounds + 1):
            if args.busy_width and args.busy_slow:
                busy_steps = slow_fan_out(args.busy_width, slow_url)
            else:
                busy_steps = fan_out(args.busy_width) if args.busy_width else DAG5
            result = asyncio.run(_round(platform.base_url, busy, quiet, args.burst, args.quiet, busy_steps))
            print(
                f"| {number} | {_cell(result['alone_ms'])} | {_cell(result['during_ms'])} "
                f"| {result['quiet_done_s']:.1f} | {result['burst_drained_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
