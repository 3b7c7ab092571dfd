# intent_ref: platform.execution
"""The example remote worker against a devhost: the seed tutorial runs to the end; task tokens are single use."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from devhost.child import PROJECT_ROOT
from devhost.identity import mint_token_cli
from examples.workers import remote_worker
from tests.e2e.conftest import DevhostFactory
from tests.e2e.test_devhost_eventhubs import admin_client, running_host

pytestmark = pytest.mark.e2e

SEED_WEB_APP = {
    "name": "deploy-web-app",
    "definition": {
        "target": "production",
        "steps": [
            {"action": "build-docker-image", "image": "myapp:latest", "context": "./app"},
            {"action": "push-to-registry", "registry": "azurecr.io", "image": "myapp:latest"},
            {"action": "deploy-to-kubernetes", "namespace": "production", "replicas": 3},
        ],
    },
}
STEPS = ["build-docker-image", "push-to-registry", "deploy-to-kubernetes"]
ROLES = ["Intent.Author", "Intent.Deployer", "Intent.Reader"]
READ = "/devhost/eventhubs/module-work/consumergroups/{group}/events"


# ----------------------------------------------------------------------------------------------- helpers
def read_group(base_url: str, group: str, wait: float = 0.0, limit: int = 100, *, key: str) -> list[dict[str, Any]]:
    """The group's next events through the devhost's read route (it needs the host's master key)."""
    response = httpx.get(
        base_url + READ.format(group=group),
        params={"limit": limit, "wait": wait},
        headers={"x-functions-key": key},
        timeout=wait + 10,
    )
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def skip_history(base_url: str, *groups: str, key: str) -> None:
    """Move the groups past what earlier tests left on the session's `module-work`."""
    for group in groups:
        while read_group(base_url, group, key=key):
            pass


def start_execution(base_url: str, headers: dict[str, str]) -> str:
    """Create the seed's deploy-web-app intent and execute it; returns the execution id."""
    # Intent names are unique per tenant and the session's database is shared (test_demo_seed_e2e takes the name).
    body = {**SEED_WEB_APP, "name": f"deploy-web-app-{uuid.uuid4().hex[:8]}"}
    created = httpx.post(f"{base_url}/api/v1/intents", json=body, headers=headers)
    assert created.status_code == 201, created.text
    started = httpx.post(f"{base_url}/api/v1/intents/{created.json()['id']}/execute", headers=headers)
    assert started.status_code in (200, 201, 202), started.text
    execution_id: str = started.json()["execution_id"]
    return execution_id


@contextmanager
def worker_running(base_url: str, group: str, key: str) -> Iterator[None]:
    """The example worker, `--once` in a loop on a thread, until the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                remote_worker.main(["--devhost", base_url, "--devhost-key", key, "--consumer-group", group, "--once"])
            except Exception as exc:  # surfaced after the block
                errors.append(exc)
                return
            stop.wait(0.2)

    thread = threading.Thread(target=loop, name="example-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors


def follow(base_url: str, headers: dict[str, str], execution_id: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every event of the execution until it finishes (long polls)."""
    events: list[dict[str, Any]] = []
    after, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{base_url}/api/v1/executions/{execution_id}/events",
            params={"after": after, "wait": 5},
            headers=headers,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["items"]
        after = page["next_after"]
        if page["status"] in ("succeeded", "failed", "cancelled") and not page["items"]:
            return events
    raise AssertionError(f"execution {execution_id} did not finish: {[e['type'] for e in events]}")


def work_item(
    base_url: str, group: str, execution_id: str, step_id: str, timeout: float = 60.0, *, key: str
) -> dict[str, Any]:
    """The work item of the execution's step, read with `group`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_group(base_url, group, wait=5, key=key):
            body = event["body"]
            if body.get("execution_id") == execution_id and body.get("step_id") == step_id:
                assert event["properties"] == {"type": "step.work", "action": body["action"]}
                return dict(body)
    raise AssertionError(f"no work item for {execution_id}/{step_id}")


# ------------------------------------------------------------------------------------------------- tests
def test_example_worker_runs_the_seed_tutorial_to_success(devhost_factory: DevhostFactory, pg: Any) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT, extra_args=("--seed-demo",))
    token = mint_token_cli(pg.root, host.base_url, "fabrikam", ROLES, [], None, 600, False)
    headers = {"Authorization": f"Bearer {token}"}
    group = f"example-worker-{uuid.uuid4().hex[:8]}"
    skip_history(host.base_url, group, key=host.host_key)

    execution_id = start_execution(host.base_url, headers)
    with worker_running(host.base_url, group, host.host_key):
        events = follow(host.base_url, headers, execution_id)

    types = [e["type"] for e in events]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    expected = [
        "execution_started",
        *[t for _ in STEPS for t in ("step_started", "step_completed")],
        "execution_completed",
    ]
    remaining = iter(types)
    assert all(t in remaining for t in expected), types  # in this order, other events between
    completed = [e for e in events if e["type"] == "step_completed"]
    assert [e["step_id"] for e in completed] == STEPS
    results = {e["step_id"]: e["result"] for e in completed}
    assert results["build-docker-image"]["image"] == "example.azurecr.io/myapp:latest"
    assert results["build-docker-image"]["digest"].startswith("sha256:")
    assert results["push-to-registry"]["pushed"] == "azurecr.io/myapp:latest"
    assert {k: results["deploy-to-kubernetes"][k] for k in ("namespace", "replicas")} == {
        "namespace": "production",
        "replicas": 3,
    }
    assert isinstance(results["deploy-to-kubernetes"]["revision"], int)

    execution = httpx.get(f"{host.base_url}/api/v1/executions/{execution_id}", headers=headers).json()
    assert execution["status"] == "succeeded"
    assert [s["step_id"] for s in execution["steps"]] == STEPS
    for step in execution["steps"]:
        assert step["state"] == "succeeded", step
        assert step["output"] == results[step["step_id"]]
        assert [a["remote"] for a in step["attempts"]] == [True]


def test_task_tokens_are_single_use_unforgeable_and_bound_to_their_step(
    devhost_factory: DevhostFactory, pg: Any
) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT, extra_args=("--seed-demo",))
    token = mint_token_cli(pg.root, host.base_url, "fabrikam", ROLES, [], None, 600, False)
    headers = {"Authorization": f"Bearer {token}"}
    spy = f"spy-{uuid.uuid4().hex[:8]}"
    skip_history(host.base_url, spy, key=host.host_key)

    execution_id = start_execution(host.base_url, headers)
    item = work_item(host.base_url, spy, execution_id, "build-docker-image", key=host.host_key)
    assert item["remote"] is True and item["phase"] == "run" and item["attempt"] == 1
    assert item["complete_url"] == f"/api/v1/executions/{execution_id}/steps/build-docker-image/complete"
    task_token, output = item["task_token"], {"image": "myapp:latest"}

    def complete(url: str, task_token: str) -> httpx.Response:
        return httpx.post(host.base_url + url, json={"task_token": task_token, "output": output}, timeout=30)

    prefix, claims, signature = task_token.split(".")
    middle = len(signature) // 2
    forged = (
        f"{prefix}.{claims}.{signature[:middle]}{'A' if signature[middle] != 'A' else 'B'}{signature[middle + 1 :]}"
    )
    assert complete(item["complete_url"], forged).status_code == 401
    other_step = item["complete_url"].replace("/build-docker-image/", "/push-to-registry/")
    assert complete(other_step, task_token).status_code == 403
    # Neither refusal used the token up.
    first = complete(item["complete_url"], task_token)
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "succeeded"
    reused = complete(item["complete_url"], task_token)
    assert reused.status_code == 409, reused.text
    assert (
        httpx.post(
            host.base_url + item["fail_url"], json={"task_token": task_token, "error": "late"}, timeout=30
        ).status_code
        == 409
    )


# ------------------------------------------------------------------------- the devhost's read route, in process
def test_devhost_read_route_hands_each_event_to_one_reader_of_a_group(pg: Any, tmp_path: Path) -> None:
    hub, key = f"read-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex

    async def scenario() -> None:
        async with running_host(pg, tmp_path) as host, admin_client(host) as client:
            route = f"/devhost/eventhubs/{hub}/consumergroups/{{group}}/events"
            assert (await client.get(route.format(group="g"))).status == 404  # no such hub yet
            bodies = [{"n": 0}, "plain text", {"n": 2}, {"n": 3}, {"n": 4}]
            response = await client.post(
                f"/devhost/eventhubs/{hub}/events",
                json={
                    "events": [
                        {"body": body, "partition_key": key, "properties": {"i": i}} for i, body in enumerate(bodies)
                    ]
                },
            )
            assert response.status == 200

            first = (await (await client.get(route.format(group="g"), params={"limit": "3"})).json())["events"]
            second = (await (await client.get(route.format(group="g"), params={"limit": "3"})).json())["events"]
            assert [e["body"] for e in first + second] == bodies  # JSON decoded; text as text
            assert [e["properties"] for e in first + second] == [{"i": i} for i in range(5)]
            assert {e["partition_key"] for e in first} == {key}
            assert [e["sequence_number"] for e in first + second] == list(range(5))
            assert (await (await client.get(route.format(group="g"))).json())["events"] == []
            # Another group has its own checkpoints.
            other = (await (await client.get(route.format(group="h"), params={"limit": "100"})).json())["events"]
            assert len(other) == 5

            # A long poll answers when an event arrives, not when `wait` runs out.
            started = time.monotonic()
            waiting = asyncio.ensure_future(client.get(route.format(group="g"), params={"wait": "20"}))
            await asyncio.sleep(0.5)
            await client.post(f"/devhost/eventhubs/{hub}/events", json={"events": [{"body": {"late": True}}]})
            late = (await (await waiting).json())["events"]
            assert [e["body"] for e in late] == [{"late": True}]
            assert time.monotonic() - started < 10

            # A reader that gave up before the answer came: what it missed is not checkpointed, and read again.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.get(route.format(group="g"), params={"wait": "5"}), 0.5)
            await client.post(f"/devhost/eventhubs/{hub}/events", json={"events": [{"body": {"missed": True}}]})
            await asyncio.sleep(0.5)  # the abandoned long poll wakes, fails to answer, checkpoints nothing
            again = (await (await client.get(route.format(group="g"))).json())["events"]
            assert [e["body"] for e in again] == [{"missed": True}]

            for path, params, status in [
                (route.format(group="bad group!"), {}, 400),
                (route.format(group="g"), {"limit": "0"}, 400),
                (route.format(group="g"), {"wait": "99"}, 400),
                ("/devhost/eventhubs/conformance-batch/consumergroups/$Default/events", {}, 409),  # the app's
            ]:
                assert (await client.get(path, params=params)).status == status, path

    asyncio.run(scenario())


def test_worker_skips_what_it_should_not_take() -> None:
    posted: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(request.url.path)
        return httpx.Response(200, json={"state": "succeeded"})

    options = remote_worker.parse_args(["--devhost", "http://127.0.0.1:1"])
    item = {
        "type": "step.work",
        "remote": True,
        "action": "push-to-registry",
        "phase": "run",
        "attempt": 1,
        "params": {"registry": "r.io", "image": "a:1"},
        "task_token": "t",
        "complete_url": "/c",
        "fail_url": "/f",
        "execution_id": "e",
        "step_id": "s",
    }
    with httpx.Client(base_url="http://platform", transport=httpx.MockTransport(answer)) as api:
        assert remote_worker.handle_item({**item, "remote": False}, api, options).startswith("skipped")
        assert remote_worker.handle_item({**item, "action": "http.request"}, api, options).startswith("skipped")
        assert remote_worker.handle_item("not json", api, options).startswith("skipped")
        assert posted == []
        assert remote_worker.handle_item(item, api, options).startswith("completed")
        failing = remote_worker.parse_args(["--devhost", "http://x", "--fail-action", "push-to-registry"])
        assert remote_worker.handle_item(item, api, failing).startswith("failed")
        assert remote_worker.handle_item({**item, "attempt": 2}, api, failing).startswith("completed")
    assert posted == ["/c", "/f", "/c"]
