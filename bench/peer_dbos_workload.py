# intent_ref: platform.execution
"""The peer's side of bench/peer.py: the 5-step chain as a DBOS Transact workflow, batches on command (JSON lines)."""

# Runs in .venv-bench (dbos is a development-only dependency kept out of the app's venv); imports nothing of the
# project. Reads one JSON command a line on stdin, {"executions": N, "concurrency": C} or {"quit": true}, and answers
# each with one JSON line on stdout: {"wall_s", "latencies_ms", "errors"}. Logs go to stderr.

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings
from dbos import DBOS, DBOSConfig
from psycopg_pool import ConnectionPool

DATABASE = "qp_bench_peer"
CONTAINER = "bench-peer-artifacts"
STEPS = 5

_pool: ConnectionPool | None = None
_blobs = threading.local()
_connection_string = ""


def _container() -> ContainerClient:
    """One blob client per thread, like the platform's module worker threads."""
    client = getattr(_blobs, "container", None)
    if client is None:
        client = BlobServiceClient.from_connection_string(_connection_string).get_container_client(CONTAINER)
        _blobs.container = client
    return client


@DBOS.step()
def emit_event(execution_id: str, step_id: str, i: int) -> dict[str, Any]:
    """event.emit's work: one event row with a derived id, committed (the platform publishes to a log in Postgres)."""
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{execution_id}/{step_id}"))
    body = {
        "id": event_id,
        "type": "custom.bench.tick",
        "time": datetime.now(UTC).isoformat(),
        "execution_id": execution_id,
        "step_id": step_id,
        "data": {"i": i},
    }
    assert _pool is not None
    with _pool.connection() as conn:
        conn.execute(
            "INSERT INTO bench_peer_events (id, execution_id, step_id, body) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            (event_id, execution_id, step_id, json.dumps(body)),
        )
    return {"event_id": event_id}


@DBOS.step()
def write_artifact(execution_id: str, step_id: str, i: int) -> dict[str, Any]:
    """artifact.write's work: one small JSON blob uploaded to Azurite with its digest in the metadata."""
    data = json.dumps({"i": i}).encode()
    digest = hashlib.sha256(data).hexdigest()
    name = f"{execution_id}/{step_id}.json"
    _container().upload_blob(
        name,
        data,
        overwrite=True,
        content_settings=ContentSettings(content_type="application/json"),
        metadata={"idempotency_key": f"{execution_id}:{step_id}", "sha256": digest},
    )
    return {"blob_name": name, "size": len(data), "sha256": digest}


@DBOS.workflow()
def chain() -> list[dict[str, Any]]:
    """The 5-step chain: event, artifact, event, artifact, event, each after the previous one."""
    execution_id = DBOS.workflow_id or str(uuid.uuid4())
    outputs = []
    for i in range(STEPS):
        step = emit_event if i % 2 == 0 else write_artifact
        outputs.append(step(execution_id, f"s{i:02d}", i))
    return outputs


def _timed() -> float:
    started = time.perf_counter()
    chain()
    return (time.perf_counter() - started) * 1000


def run_batch(executions: int, concurrency: int) -> dict[str, Any]:
    """One warm-up, then `executions` workflows, `concurrency` at a time (each called in its own thread)."""
    _timed()
    errors = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(_timed) for _ in range(executions)]
        latencies = []
        for future in futures:
            try:
                latencies.append(future.result())
            except Exception as exc:  # noqa: BLE001  # counted and reported, the batch goes on
                errors += 1
                print(f"workflow failed: {exc!r}", file=sys.stderr)
    return {"wall_s": time.perf_counter() - started, "latencies_ms": latencies, "errors": errors}


def _database_url(server_url: str, database: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def main() -> None:
    """Prepare the database and the container, launch DBOS, then answer batch commands until told to quit."""
    global _pool, _connection_string  # noqa: PLW0603  # set once, before any workflow runs
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres-url", required=True, help="superuser URL of the embedded Postgres")
    parser.add_argument("--blob-connection-string", required=True)
    args = parser.parse_args()
    with psycopg.connect(args.postgres_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {DATABASE}")
    url = _database_url(args.postgres_url, DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_peer_events"
            " (id uuid PRIMARY KEY, execution_id text NOT NULL, step_id text NOT NULL, body jsonb NOT NULL)"
        )
    _connection_string = args.blob_connection_string
    container = BlobServiceClient.from_connection_string(_connection_string).get_container_client(CONTAINER)
    if not container.exists():
        container.create_container()
    _pool = ConnectionPool(url, min_size=2, max_size=16, kwargs={"autocommit": True}, open=True)
    config: DBOSConfig = {"name": "qp-bench-peer", "system_database_url": url, "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        print(json.dumps(run_batch(int(command["executions"]), int(command["concurrency"]))), flush=True)
    DBOS.destroy()
    _pool.close()


if __name__ == "__main__":
    main()
