# intent_ref: platform.events
"""Domain events out, end to end on the devhost: an execution's events reach `platform-events` through the outbox
relay (a timer function), each once, keyed by the tenant, read as an outside consumer group would."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.e2e.test_executions_e2e import (  # noqa: F401  # platform and side_effects are fixtures
    Platform,
    SideEffects,
    create_intent,
    follow,
    http,
    platform,
    side_effects,
    started,
)

pytestmark = pytest.mark.e2e

HUB = "platform-events"


def _read_until(
    platform: Platform,
    group: str,
    done: Any,
    timeout: float = 45,
) -> list[dict[str, Any]]:
    """Every event the group reads until `done(events)` holds (the relay runs every second)."""
    url = f"{platform.base}/devhost/eventhubs/{HUB}/consumergroups/{group}/events"
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(url, params={"limit": 100, "wait": 2}, headers=platform.host.key_header, timeout=15)
        if response.status_code == 404:  # nothing was ever published to the hub yet
            time.sleep(1)
            continue
        response.raise_for_status()
        events.extend(response.json()["events"])
        if done(events):
            return events
    raise AssertionError(f"not found on {HUB} in {timeout} s: {[e.get('body', {}).get('type') for e in events]}")


def test_an_executions_domain_events_reach_platform_events_once_keyed_by_tenant(
    platform: Platform,
    side_effects: SideEffects,
) -> None:
    me = httpx.get(f"{platform.base}/api/v1/me", headers=platform.headers(["Intent.Reader"]))
    assert me.status_code == 200, me.text
    tenant_id = me.json()["tenant_id"]
    intent = create_intent(platform, [{"id": "ping", **http(side_effects, f"ping-{uuid.uuid4().hex[:6]}")}])
    execution_id = started(platform, intent)
    status, _ = follow(platform, execution_id)
    assert status == "succeeded"

    def ours(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            e
            for e in events
            if e["body"]["data"].get("execution_id") == execution_id or e["body"].get("subject") == f"intents/{intent}"
        ]

    def complete(events: list[dict[str, Any]]) -> bool:
        return any(e["body"]["type"] == "execution.completed" for e in ours(events))

    group = f"e2e-{uuid.uuid4().hex[:8]}"
    mine = ours(_read_until(platform, group, complete))
    time.sleep(6)  # one more relay period: nothing of this execution may come again
    mine += ours(_read_until(platform, group, lambda _events: True, timeout=3))

    types = Counter(e["body"]["type"] for e in mine)
    assert types["execution.started"] == 1 and types["execution.completed"] == 1, types
    assert types["step.completed"] == 1 and types["step.failed"] == 0, types
    ids = [e["body"]["id"] for e in mine]
    assert len(ids) == len(set(ids))
    for event in mine:
        body, properties = event["body"], event["properties"]
        assert event["partition_key"] == body["tenant_id"] == properties["tenant_id"] == tenant_id
        assert properties["event_id"] == body["id"] and properties["event_type"] == body["type"]
    step = next(e["body"] for e in mine if e["body"]["type"] == "step.completed")
    assert step["subject"] == f"executions/{execution_id}/steps/ping"
    assert step["data"]["action"] == "http.request" and step["data"]["duration_ms"] >= 0
    # Recorded in order, published in order: one partition per tenant keeps it.
    # The seed's flows: intent_created, then execution_started, step_completed, execution_completed.
    order = [e["body"]["type"] for e in mine]
    assert order == ["intent.created", "execution.started", "step.completed", "execution.completed"], order
