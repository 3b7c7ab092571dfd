# intent_ref: platform.devhost-durable
"""The durable dispatcher sleeps until something is due: timers wake it on time, other writers by NOTIFY."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import azure.durable_functions as df
import psycopg
import pytest
from psycopg.types.json import Jsonb

from devhost.durable.protocol import EventType, event
from tests.e2e.conformance_index import CONFORMANCE_APP, conformance_index
from tests.e2e.durable_support import ServedHost, serve_durable_host, wait_for_status

NEVER_S = 600.0
"""A safety poll longer than any test: only a timer's due time or a notification can wake the dispatcher."""


def _run(pg, tmp_path: Path, scenario: Callable[[ServedHost], Awaitable[None]]) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        hub = f"w{uuid.uuid4().hex[:12]}"
        served = serve_durable_host(
            conformance_index(), CONFORMANCE_APP, pg.owner_url, tmp_path, hub, poll_interval=NEVER_S
        )
        async with served as host:
            await scenario(host)

    asyncio.run(main())


async def _history_names(owner_url: str, hub: str, instance_id: str) -> list[str | None]:
    async with await psycopg.AsyncConnection.connect(owner_url) as conn:
        cur = await conn.execute(
            "SELECT event->>'Name' FROM devhost_durable.history WHERE task_hub = %s AND instance_id = %s",
            (hub, instance_id),
        )
        return [row[0] for row in await cur.fetchall()]


def test_a_timer_wakes_the_dispatcher_when_it_falls_due(pg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CONFORMANCE_STATE_DIR", str(tmp_path))

    async def scenario(host: ServedHost) -> None:
        instance_id = await host.client.start_new("durable_timer_orchestrator", None, 0.3)
        status = await wait_for_status(host.client, instance_id)
        assert status.runtime_status == df.OrchestrationRuntimeStatus.Completed
        assert datetime.fromisoformat(status.output["resumed_at"]) >= datetime.fromisoformat(status.output["fire_at"])

    _run(pg, tmp_path, scenario)


def test_a_message_written_by_another_connection_wakes_the_dispatcher(  # type: ignore[no-untyped-def]
    pg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONFORMANCE_STATE_DIR", str(tmp_path))

    async def scenario(host: ServedHost) -> None:
        instance_id = await host.client.start_new("durable_race_orchestrator", None, {"timeout_s": 300})
        await wait_for_status(host.client, instance_id, lambda s: s.custom_status == "racing")
        # Written as another process would, behind the host's back: nothing in the host wakes its dispatcher.
        raised = event(EventType.EventRaised, datetime.now(UTC), Name="Go", Input=json.dumps("sql"))
        async with await psycopg.AsyncConnection.connect(pg.owner_url, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO devhost_durable.inbox (task_hub, instance_id, event, visible_at)"
                " VALUES (%s, %s, %s, now())",
                (host.hub, instance_id, Jsonb(raised)),
            )
        deadline = time.monotonic() + 20  # far below the 300 s timer and the safety poll
        while "durable_gated_echo" not in await _history_names(pg.owner_url, host.hub, instance_id):
            assert time.monotonic() < deadline, "the dispatcher was not woken by the notification"
            await asyncio.sleep(0.05)
        status = await wait_for_status(host.client, instance_id)
        assert status.output == "event:sql:after"

    _run(pg, tmp_path, scenario)
