# intent_ref: platform.execution
"""The engine under load and at its edges, through the devhost: a long run continues as new and finishes, many
near-zero waits never race their own start, and 64 executions with 64 event long polls at once get no 5xx and
all complete (behaviour only: the speed is measured by bench/, never asserted)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from shared.engine.machine import CONTINUE_AFTER_STEPS
from tests.e2e.test_executions_e2e import (  # noqa: F401  # fixtures, imported by name
    AUTHOR,
    Platform,
    _set_quota,
    create_intent,
    detail,
    follow,
    platform,
    side_effects,
    started,
)

pytestmark = pytest.mark.e2e
LOAD_TENANT = "tenant-123"
THREE_WAITS = [{"id": s, "action": "wait", "seconds": 0.001} for s in ("a", "b", "c")]


def wait_step(step_id: str, seconds: float = 0.001, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "wait", "seconds": seconds, **extra}


def test_a_long_run_continues_as_new_and_finishes_every_step(platform: Platform) -> None:
    count = 3 * CONTINUE_AFTER_STEPS + 2
    intent_id = create_intent(platform, [wait_step(f"s{i:02d}") for i in range(count)])
    execution_id = started(platform, intent_id)
    status, events = follow(platform, execution_id, timeout=180)
    assert status == "succeeded"
    assert [e["step"] for e in events if e["type"] == "step_completed"] == [f"s{i:02d}" for i in range(count)]
    assert all(step["state"] == "succeeded" for step in detail(platform, execution_id)["steps"])
    # The orchestration that finished is a later generation: its start input is the state the previous one carried.
    with psycopg.connect(platform.owner_url) as conn:
        row = conn.execute(
            "SELECT input_json, runtime_status FROM devhost_durable.instances WHERE instance_id = %s", (execution_id,)
        ).fetchone()
    assert row is not None and row[1] == "Completed"
    started_with = json.loads(row[0])
    if isinstance(started_with, str):  # the SDK sends its input as a JSON string inside the JSON
        started_with = json.loads(started_with)
    assert started_with["machine"]["generation"] >= 3


def test_many_near_zero_waits_never_fail_on_their_own_timer(platform: Platform) -> None:
    # Parallel 0.001 s waits: each step's timer is due before its start record could commit (issue 14, point 7).
    intent_id = create_intent(
        platform, [wait_step(f"w{i}", depends_on=[]) for i in range(4)] + [wait_step("after", depends_on=["w0"])]
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        executions = list(pool.map(lambda _: started(platform, intent_id), range(16)))
        outcomes = list(pool.map(lambda e: follow(platform, e, timeout=180), executions))
    assert [status for status, _ in outcomes] == ["succeeded"] * 16, [
        [(e["type"], e.get("error")) for e in events if e.get("error")] for _, events in outcomes
    ]


def test_64_executions_and_64_event_streams_at_once_get_no_5xx_and_all_complete(platform: Platform) -> None:
    # tenant-123: the burst spends its request rate, which the other tests' tenants keep.
    _set_quota(platform, LOAD_TENANT, 200)
    try:
        author, reader = platform.headers(AUTHOR, LOAD_TENANT), platform.headers(["Intent.Reader"], LOAD_TENANT)
        body = {"name": f"load-{time.monotonic_ns()}", "definition": {"target": "staging", "steps": THREE_WAITS}}
        created = httpx.post(f"{platform.base}/api/v1/intents", json=body, headers=author, timeout=30)
        assert created.status_code == 201, created.text
        intent_id = created.json()["id"]
        statuses: list[int] = []

        def start(_: int) -> str:
            while True:  # 429 (the tenant's rate) is the platform's answer to wait; a 5xx never is
                response = httpx.post(f"{platform.base}/api/v1/intents/{intent_id}/execute", headers=author, timeout=60)
                statuses.append(response.status_code)
                if response.status_code != 429:
                    assert response.status_code == 202, response.text
                    return str(response.json()["execution_id"])
                time.sleep(float(response.headers.get("Retry-After", "1")))

        def stream(execution_id: str) -> str:
            after, deadline = 0, time.monotonic() + 240
            while time.monotonic() < deadline:
                response = httpx.get(
                    f"{platform.base}/api/v1/executions/{execution_id}/events",
                    params={"after": after, "wait": 10},
                    headers=reader,
                    timeout=60,
                )
                statuses.append(response.status_code)
                if response.status_code == 429:
                    time.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                assert response.status_code == 200, response.text
                page = response.json()
                after = page["next_after"]
                if page["status"] in ("succeeded", "failed", "cancelled") and not page["items"]:
                    return str(page["status"])
            raise AssertionError(f"{execution_id} did not finish")

        with ThreadPoolExecutor(max_workers=128) as pool:
            executions = list(pool.map(start, range(64)))
            finals = list(pool.map(stream, executions))
        assert not [s for s in statuses if s >= 500], sorted(set(statuses))
        assert finals == ["succeeded"] * 64
    finally:
        _restore_quota(platform)


def _restore_quota(platform: Platform) -> None:
    """Put the default quota back once the tenant's request rate allows it again (the burst spent its tokens)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            _set_quota(platform, LOAD_TENANT, None)
            return
        except (KeyError, AssertionError):  # 429 on the listing or the change: wait for the bucket to refill
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
