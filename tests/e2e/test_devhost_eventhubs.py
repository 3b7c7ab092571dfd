# intent_ref: platform.devhost-eventhubs
"""The devhost's Event Hubs, in-process on the session's Postgres: partitions, metadata, checkpoints, publisher."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from devhost.component import HostContext
from devhost.eventhubs import EventHubHost
from devhost.eventhubs.store import migrate
from devhost.invoker import Invoker
from shared.events import LocalEventHubPublisher, OutboundEvent
from tests.e2e.conformance_index import CONFORMANCE_APP, conformance_index

pytestmark = pytest.mark.e2e

BATCH_HUB, SINGLE_HUB, TEXT_HUB = "conformance-batch", "conformance-single", "conformance-text"
RETRIED_HUB = "conformance-retried"
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------- helpers
def records(state_dir: Path, function: str) -> list[dict[str, Any]]:
    """What a conformance function recorded so far."""
    path = state_dir / f"{function}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def eventually(probe: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running_host(pg: Any, data_dir: Path) -> AsyncIterator[EventHubHost]:
    """An EventHubHost on the conformance app. A long poll interval: only NOTIFY can wake it in time."""
    invoker = Invoker(str(CONFORMANCE_APP))
    ctx = HostContext(conformance_index(), invoker, pg.owner_url, data_dir, "http://127.0.0.1:0", "ConformanceHub")
    host = EventHubHost(ctx, poll_interval=60.0)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()
        invoker.shutdown()


@asynccontextmanager
async def admin_client(host: EventHubHost) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An HTTP client for the host's admin routes."""
    app = web.Application()
    host.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client


def stored_events(pg: Any, hub: str, partition_id: int) -> dict[int, tuple[int, datetime]]:
    """sequence number -> (byte offset, enqueued time) as the log holds them."""
    with psycopg.connect(pg.owner_url) as conn:
        rows = conn.execute(
            "SELECT sequence_number, byte_offset, enqueued_at FROM devhost_eventhubs.events"
            " WHERE hub = %s AND partition_id = %s",
            (hub, partition_id),
        ).fetchall()
    return {int(r[0]): (int(r[1]), r[2]) for r in rows}


async def publish_one(host: EventHubHost, hub: str, body: dict[str, Any], partition_key: str) -> dict[str, Any]:
    """Publish one event through the admin route; where it landed (partition id, sequence number)."""
    async with admin_client(host) as client:
        payload = {"events": [{"body": body, "partition_key": partition_key}]}
        response = await client.post(f"/devhost/eventhubs/{hub}/events", json=payload)
        assert response.status == 200
        result: dict[str, Any] = (await response.json())["events"][0]
        return result


def checkpoint_of(pg: Any, hub: str, group: str, partition_id: int) -> int | None:
    with psycopg.connect(pg.owner_url) as conn:
        row = conn.execute(
            "SELECT sequence_number FROM devhost_eventhubs.checkpoints"
            " WHERE hub = %s AND consumer_group = %s AND partition_id = %s",
            (hub, group, partition_id),
        ).fetchone()
    return None if row is None else int(row[0])


@pytest.fixture()
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the conformance functions record what they receive (for this test only)."""
    monkeypatch.setenv("CONFORMANCE_STATE_DIR", str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------------------------------------- tests
def test_partition_keys_map_to_stable_partitions_with_sequence_numbers_per_partition(pg: Any) -> None:
    asyncio.run(migrate(pg.owner_url))
    hub = f"stable-{uuid.uuid4().hex[:8]}"
    sent: list[tuple[str | None, bytes]] = [
        ("tenant-a", b"a" * 3),
        ("tenant-b", b"bb"),
        ("tenant-a", b"a"),
        ("tenant-b", b"b" * 7),
    ]
    sent += [(None, b"x" * n) for n in range(1, 9)]
    with psycopg.connect(pg.owner_url, autocommit=True) as conn:
        landed = [
            conn.execute(
                "SELECT partition_id, sequence_number FROM devhost_eventhubs.publish(%s, %s, %s, %s)",
                (hub, key, body, Jsonb({})),
            ).fetchone()
            for key, body in sent
        ]
        rows = conn.execute(
            "SELECT partition_id, sequence_number, byte_offset, octet_length(body) FROM devhost_eventhubs.events"
            " WHERE hub = %s ORDER BY partition_id, sequence_number",
            (hub,),
        ).fetchall()
    partitions = [int(row[0]) for row in landed if row is not None]
    assert len(partitions) == len(sent)

    # A key always lands on the partition its MD5 prefix names: stable across processes and releases.
    for key in ("tenant-a", "tenant-b"):
        expected = int(hashlib.md5(key.encode()).hexdigest()[:8], 16) % 4  # not security
        assert {p for p, (k, _) in zip(partitions, sent, strict=True) if k == key} == {expected}
    # Without a key, events go round robin over the hub's 4 partitions.
    keyless = partitions[4:]
    assert keyless == [(keyless[0] + i) % 4 for i in range(8)]
    # Each partition numbers its events 0, 1, 2, ... and offsets advance by the body sizes.
    by_partition: dict[int, list[tuple[int, int, int]]] = {}
    for partition, sequence, offset, size in rows:
        by_partition.setdefault(partition, []).append((sequence, offset, size))
    for entries in by_partition.values():
        assert [s for s, _, _ in entries] == list(range(len(entries)))
        assert entries[0][1] == 0
        assert all(b[1] == a[1] + a[2] for a, b in zip(entries, entries[1:], strict=False))


def test_cardinality_many_gets_batches_with_each_events_metadata(pg: Any, state_dir: Path) -> None:
    run, key = uuid.uuid4().hex, f"batch-{uuid.uuid4().hex[:6]}"

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with running_host(pg, state_dir) as host, admin_client(host) as client:
            events = [{"body": {"run": run, "n": n}, "partition_key": key, "properties": {"n": n}} for n in range(15)]
            response = await client.post(f"/devhost/eventhubs/{BATCH_HUB}/events", json={"events": events})
            assert response.status == 200
            landed = (await response.json())["events"]

            def mine() -> list[dict[str, Any]]:
                return [b for b in records(state_dir, "on_conformance_batch") if run in b["events"][0]["body"]]

            await eventually(lambda: sum(len(b["events"]) for b in mine()) >= 15 and mine(), "15 events")
            return landed, mine()

    landed, batches = asyncio.run(scenario())
    partition = landed[0]["partition_id"]
    assert {e["partition_id"] for e in landed} == {partition}  # one key, one partition
    sequences = [e["sequence_number"] for e in landed]
    assert sequences == list(range(sequences[0], sequences[0] + 15))

    delivered = [e for b in batches for e in b["events"]]
    assert [json.loads(e["body"])["n"] for e in delivered] == list(range(15))  # in order, exactly once
    assert len(batches) >= 2 and all(len(b["events"]) <= 10 for b in batches)  # host.json maxEventBatchSize
    stored = stored_events(pg, BATCH_HUB, int(partition))
    for event, sequence in zip(delivered, sequences, strict=True):
        offset, enqueued = stored[sequence]
        assert event["sequence_number"] == sequence
        assert int(event["offset"]) == offset
        assert event["partition_key"] == key
        assert datetime.fromisoformat(event["enqueued_time"]) == enqueued
    first = batches[0]
    assert first["partition_context"] == {
        "FullyQualifiedNamespace": "localhost",
        "EventHubName": BATCH_HUB,
        "ConsumerGroup": "$Default",
        "PartitionId": partition,
    }
    assert first["properties"] == [{"n": json.loads(e["body"])["n"]} for e in first["events"]]
    assert {
        "SystemPropertiesArray",
        "PartitionKeyArray",
        "OffsetArray",
        "SequenceNumberArray",
        "EnqueuedTimeUtcArray",
        "PropertiesArray",
        "PartitionContext",
    } <= set(first["metadata_keys"])
    assert "SystemProperties" not in first["metadata_keys"]


def test_cardinality_one_checkpoints_even_when_the_function_raises(pg: Any, state_dir: Path) -> None:
    run, key = uuid.uuid4().hex, f"single-{uuid.uuid4().hex[:6]}"

    def mine() -> list[dict[str, Any]]:
        return [r for r in records(state_dir, "on_conformance_single") if run in r["body"]]

    async def publish(host: EventHubHost, n: int, fail: bool = False) -> dict[str, Any]:
        return await publish_one(host, SINGLE_HUB, {"run": run, "n": n, "fail": fail}, key)

    async def scenario() -> list[dict[str, Any]]:
        async with running_host(pg, state_dir) as host:
            landed = [await publish(host, 0), await publish(host, 1, fail=True), await publish(host, 2)]
            await eventually(lambda: len(mine()) >= 3, "three single deliveries")
            partition, last = int(landed[-1]["partition_id"]), landed[-1]["sequence_number"]
            # The checkpoint passes the event whose invocation raised: the stream never stalls.
            await eventually(lambda: checkpoint_of(pg, SINGLE_HUB, "$Default", partition) == last, "checkpoint")
        async with running_host(pg, state_dir) as host:
            # Same key, same partition, delivered in order: any redelivery would show before this.
            await publish(host, 3)
            await eventually(lambda: any(json.loads(r["body"])["n"] == 3 for r in mine()), "the sentinel")
        return landed

    landed = asyncio.run(scenario())
    received = mine()
    assert [json.loads(r["body"])["n"] for r in received] == [0, 1, 2, 3]  # no redelivery after restart
    for record, receipt in zip(received, landed, strict=False):
        assert record["sequence_number"] == receipt["sequence_number"]
        assert record["partition_key"] == key
        assert record["partition_context"]["PartitionId"] == receipt["partition_id"]
        system = record["system_properties"]
        assert system["SequenceNumber"] == receipt["sequence_number"]
        assert system["PartitionKey"] == key
        assert str(system["Offset"]) == system["OffsetString"] == record["offset"]
        assert datetime.fromisoformat(record["enqueued_time"]).utcoffset() is not None
    assert {
        "PartitionContext",
        "PartitionKey",
        "Offset",
        "OffsetString",
        "SequenceNumber",
        "EnqueuedTimeUtc",
        "Properties",
        "SystemProperties",
    } <= set(received[0]["metadata_keys"])
    assert "SystemPropertiesArray" not in received[0]["metadata_keys"]


def test_a_retry_policy_runs_a_failed_invocation_again_before_the_checkpoint_moves(pg: Any, state_dir: Path) -> None:
    run, key = uuid.uuid4().hex, f"retried-{uuid.uuid4().hex[:6]}"

    def mine() -> list[tuple[int, int, int]]:
        """(n, retry_count, max_retry_count) of every run of this test's events, in the order they ran."""
        found = [r for r in records(state_dir, "on_conformance_retried") if r["body"].get("run") == run]
        return [(r["body"]["n"], r["retry_count"], r["max_retry_count"]) for r in found]

    async def publish(host: EventHubHost, n: int, fail_runs: int) -> dict[str, Any]:
        return await publish_one(host, RETRIED_HUB, {"run": run, "n": n, "fail_runs": fail_runs}, key)

    async def scenario() -> None:
        async with running_host(pg, state_dir) as host:
            await publish(host, 0, fail_runs=1)  # succeeds on its first retry
            await publish(host, 1, fail_runs=9)  # fails its two retries too: logged, and passed
            landed = await publish(host, 2, fail_runs=0)
            await eventually(lambda: any(n == 2 for n, _, _ in mine()), "the third event")
            partition, last = int(landed["partition_id"]), landed["sequence_number"]
            await eventually(lambda: checkpoint_of(pg, RETRIED_HUB, "$Default", partition) == last, "checkpoint")
            stuck = await publish(host, 3, fail_runs=99)
            await eventually(lambda: any(n == 3 for n, _, _ in mine()), "the failing event's first run")
        # Stopped while retrying: the checkpoint stays before the event, which comes again (counted from zero).
        assert checkpoint_of(pg, RETRIED_HUB, "$Default", int(stuck["partition_id"])) == last
        async with running_host(pg, state_dir) as host:
            await eventually(lambda: [r for n, r, _ in mine() if n == 3].count(0) == 2, "the redelivery")

    asyncio.run(scenario())
    runs = mine()
    # One partition, in order: an event's retries all come before the next event.
    assert runs[:6] == [(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2), (1, 2, 2), (2, 0, 2)]
    assert runs[6] == (3, 0, 2)


def test_runtime_role_publisher_reaches_the_trigger_and_checkpoints_survive_a_restart(pg: Any, state_dir: Path) -> None:
    run = uuid.uuid4().hex
    pool: ConnectionPool[Any] = ConnectionPool(
        pg.app_url, kwargs={"autocommit": True}, min_size=1, max_size=2, open=True
    )
    publisher = LocalEventHubPublisher(pool)

    def bodies() -> list[str]:
        return [r["body"] for r in records(state_dir, "on_conformance_text") if run in r["body"]]

    async def send(label: str) -> None:
        event = OutboundEvent({"run": run, "label": label}, partition_key=run)
        await asyncio.to_thread(publisher.publish, TEXT_HUB, [event])

    async def scenario() -> None:
        async with running_host(pg, state_dir):
            await send("while-running")  # from the app's pool: NOTIFY wakes the host
            await eventually(lambda: len(bodies()) == 1, "the first event")
        await send("while-stopped")
        async with running_host(pg, state_dir):
            await eventually(lambda: len(bodies()) == 2, "the event published while stopped")

    try:
        asyncio.run(scenario())
        # The runtime role may publish, and nothing else: the log's tables stay closed to it.
        with pool.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM devhost_eventhubs.events")
    finally:
        pool.close()
    received = records(state_dir, "on_conformance_text")
    labels = [json.loads(r["body"])["label"] for r in received if run in r["body"]]
    assert labels == ["while-running", "while-stopped"]  # each exactly once
    assert {r["type"] for r in received} == {"str"}  # a str annotation gets the raw body


def test_admin_route_rejects_bad_requests_and_changes_nothing(pg: Any, state_dir: Path) -> None:
    async def scenario() -> list[int]:
        async with running_host(pg, state_dir) as host, admin_client(host) as client:
            statuses = []
            for hub, payload in [
                ("bad name!", {"events": [{"body": "x"}]}),
                (BATCH_HUB, {"events": []}),
                (BATCH_HUB, {"events": [{"partition_key": "k"}]}),
                (BATCH_HUB, {"events": [{"body": "x", "properties": [1]}]}),
            ]:
                response = await client.post(f"/devhost/eventhubs/{hub.replace(' ', '%20')}/events", json=payload)
                statuses.append(response.status)
            return statuses

    assert asyncio.run(scenario()) == [400, 400, 400, 400]
    with psycopg.connect(pg.owner_url) as conn:
        assert conn.execute("SELECT count(*) FROM devhost_eventhubs.hubs WHERE name = 'bad name!'").fetchone() == (0,)
