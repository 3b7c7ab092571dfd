# intent_ref: platform.execution
"""Server-sent event streams at scale: how long an event takes from its commit to an open stream, and how many
database connections a crowd of open streams costs, against a devhost over its own Postgres."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg

from bench.executions import RESULTS, Platform, _stats, running_platform
from devhost.identity import mint_token_cli
from shared.db.roles import DATABASE_NAME

USAGE = """\
    .venv/bin/python -m bench.event_streams [--streams 1000] [--executions 50]

Starts the platform in a devhost (default pool), provisions a bench tenant, starts `--executions` executions that
wait for an approval, opens `--streams` event streams spread over them (bare sockets reading lines, so the
client's own cost stays small; a 429 tenant-busy while opening is retried after a second, as the client does),
samples the database's client connections while they wait, then approves every execution and records, for each
event each stream receives, the time from the event's `occurred_at` (its transaction's clock on the same machine)
to its arrival. Prints the figures and writes JSON to bench/results/.
"""
STEPS = [
    {"id": "gate", "action": "approval", "message": "go?"},
    {"id": "tick", "action": "event.emit", "type": "bench.tick", "data": {"i": 1}, "depends_on": ["gate"]},
]
APPROVER_OID = "22222222-2222-4222-8222-222222222222"


class ConnectionSampler(threading.Thread):
    """Counts the database's client connections every 50 ms; `peak` and the latest `count`."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.peak, self.count, self.stop = url, 0, 0, threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, dbname=DATABASE_NAME, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                    (DATABASE_NAME,),
                ).fetchone()
                self.count = int(row[0]) - 1 if row else 0  # not this sampler's own
                self.peak = max(self.peak, self.count)
                time.sleep(0.05)


async def _open_stream(
    base_url: str,
    headers: dict[str, str],
    path: str,
    opened: asyncio.Event,
    arrivals: list[tuple[float, float]],
    refused: list[int],
) -> None:
    """One stream over a bare socket (HTTP/1.0: no chunk framing, so lines are read as they come), retried while
    its tenant is busy; records each event's time of record and of arrival. A bare reader keeps the client's own
    cost per message small, so the figures are the server's rather than an HTTP library's."""
    url = httpx.URL(base_url)
    request = (
        f"GET {path} HTTP/1.0\r\nHost: {url.host}:{url.port}\r\nAccept: text/event-stream\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        + "\r\n"
    ).encode()
    while True:
        reader, writer = await asyncio.open_connection(url.host, url.port, limit=2**20)
        try:
            writer.write(request)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            if status == 429:
                refused.append(429)
                await asyncio.sleep(1.0)
                continue
            if status != 200:
                raise RuntimeError(f"{path}: {status}")
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # the headers
            opened.set()
            while line := await reader.readline():
                if line.startswith(b"data:"):
                    found = _OCCURRED.search(line)
                    if found is not None:
                        occurred = datetime.fromisoformat(found.group(1).decode()).timestamp()
                        arrivals.append((occurred, time.time()))
            return
        finally:
            writer.close()


_OCCURRED = re.compile(rb'"occurred_at":"([^"]+)"')


async def run(platform: Platform, streams: int, executions: int) -> dict[str, Any]:
    """Open the streams, wait, approve, and measure."""
    headers = platform.headers
    limits = httpx.Limits(max_connections=streams + 50, max_keepalive_connections=streams + 50)
    async with httpx.AsyncClient(base_url=platform.base_url, headers=headers, timeout=300, limits=limits) as client:
        name = f"streams-{uuid.uuid4().hex[:6]}"
        created = await client.post(
            "/api/v1/intents", json={"name": name, "definition": {"target": "staging", "steps": STEPS}}
        )
        if created.status_code != 201:
            raise SystemExit(f"creating the bench intent: {created.status_code} {created.text}")
        intent_id = created.json()["id"]
        ids = []
        for _ in range(executions):
            started = await client.post(f"/api/v1/intents/{intent_id}/execute")
            started.raise_for_status()
            ids.append(started.json()["execution_id"])
        sampler = ConnectionSampler(platform.postgres_url)
        sampler.start()
        await asyncio.sleep(1.0)
        idle_before = sampler.count
        arrivals: list[tuple[float, float]] = []
        refused: list[int] = []
        opened = [asyncio.Event() for _ in range(streams)]
        began = time.monotonic()
        tasks = [
            asyncio.create_task(
                _open_stream(
                    platform.base_url,
                    headers,
                    f"/api/v1/executions/{ids[i % executions]}/events",
                    opened[i],
                    arrivals,
                    refused,
                )
            )
            for i in range(streams)
        ]
        await asyncio.gather(*(event.wait() for event in opened))
        open_s = time.monotonic() - began
        await asyncio.sleep(3.0)
        sampler.peak = sampler.count
        waiting = sampler.count
        await asyncio.sleep(2.0)
        waiting_peak = sampler.peak
        token = mint_token_cli(
            platform.data_dir, platform.base_url, _tenant(headers), ["Intent.Approver"], [], APPROVER_OID, 3600, False
        )
        approver = {"Authorization": f"Bearer {token}"}
        approving = datetime.now(UTC).timestamp()  # what each stream read before is history, not delivery
        for execution_id in ids:
            decided = await client.post(
                f"/api/v1/executions/{execution_id}/approvals/gate", json={"decision": "approve"}, headers=approver
            )
            decided.raise_for_status()
        await asyncio.gather(*tasks)
        sampler.stop.set()
    return {
        "streams": streams,
        "executions": executions,
        "open_s": round(open_s, 2),
        "opening_429s": len(refused),
        "client_connections_idle_before": idle_before,
        "client_connections_streams_waiting": waiting,
        "client_connections_peak_while_waiting": waiting_peak,
        "client_connections_peak_overall": sampler.peak,
        "delivery_ms": _stats([(seen - at) * 1000 for at, seen in arrivals if at >= approving]),
    }


def _tenant(headers: dict[str, str]) -> str:
    """The bench tenant's Entra tenant id, from its token's claims."""
    import jwt

    claims = jwt.decode(headers["Authorization"].split()[1], options={"verify_signature": False})
    return str(claims["tid"])


def main() -> None:
    """Run the bench and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, usage=USAGE)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--executions", type=int, default=50)
    args = parser.parse_args()
    # One tenant holds every stream: the per-tenant bound (100 by default, ADR 0031) is raised to what is measured.
    with running_platform(settings={"QP_EVENT_STREAMS_PER_TENANT": str(max(args.streams, 100))}) as platform:
        result = asyncio.run(run(platform, args.streams, args.executions))
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"event-streams-{stamp}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
