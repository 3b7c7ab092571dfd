# intent_ref: platform.execution
"""Remote work through the tenant's queue (ADR 0027), against a devhost: the example worker runs the seed tutorial,
tenants never see each other's work, an item is leased once, expired leases retry, heartbeats keep work alive, a
cancel reaches queued and leased work, task tokens are bound to their lease."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
ROLES = ["Intent.Author", "Intent.Deployer", "Intent.Executor", "Intent.Reader"]
TERMINAL = ("succeeded", "failed", "cancelled")


# ----------------------------------------------------------------------------------------------- helpers
class Tenant:
    """One demo tenant of the devhost: a person's headers and its worker daemon's headers."""

    def __init__(self, host: Any, pg: Any, name: str) -> None:
        self.base = host.base_url
        person = mint_token_cli(pg.root, host.base_url, name, ROLES, [], None, 900, False)
        self.worker_token = mint_token_cli(pg.root, host.base_url, name, ["Module.Worker"], [], None, 900, True)
        self.headers = {"Authorization": f"Bearer {person}"}
        self.worker = {"Authorization": f"Bearer {self.worker_token}"}

    def start(self, body: dict[str, Any]) -> str:
        """Create an intent (a unique name: the session's database is shared) and execute it."""
        body = {**body, "name": f"{body['name']}-{uuid.uuid4().hex[:8]}"}
        created = httpx.post(f"{self.base}/api/v1/intents", json=body, headers=self.headers, timeout=30)
        assert created.status_code == 201, created.text
        started = httpx.post(
            f"{self.base}/api/v1/intents/{created.json()['id']}/execute", headers=self.headers, timeout=30
        )
        assert started.status_code in (200, 201, 202), started.text
        execution_id: str = started.json()["execution_id"]
        return execution_id

    def lease(
        self, actions: list[str], *, wait_s: float = 0, lease_s: float = 60, max_items: int = 10
    ) -> httpx.Response:
        body = {"actions": actions, "max_items": max_items, "lease_s": lease_s, "wait_s": wait_s, "worker": "test"}
        return httpx.post(f"{self.base}/api/v1/work/lease", json=body, headers=self.worker, timeout=wait_s + 30)

    def lease_item(
        self, execution_id: str, step_id: str, *, timeout: float = 60, lease_s: float = 60, action: str | None = None
    ) -> dict[str, Any]:
        """Lease until the execution's step is handed out (items of other executions are left to expire)."""
        deadline = time.monotonic() + timeout
        actions = [action] if action else sorted(remote_worker.HANDLERS)
        while time.monotonic() < deadline:
            response = self.lease(actions, wait_s=5, lease_s=lease_s)
            assert response.status_code == 200, response.text
            for item in response.json()["items"]:
                if item["execution_id"] == execution_id and item["step_id"] == step_id:
                    return dict(item)
        raise AssertionError(f"no work item for {execution_id}/{step_id}")

    def execution(self, execution_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/api/v1/executions/{execution_id}", headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def queue(self, headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
        return httpx.get(f"{self.base}/api/v1/work", params=params, headers=headers or self.worker, timeout=30)

    def wait_for(
        self, execution_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            execution = self.execution(execution_id)
            if check(execution):
                return execution
            time.sleep(0.3)
        raise AssertionError(f"execution {execution_id} never got there: {self.execution(execution_id)}")


def report(base: str, item: dict[str, Any], *, ok: bool = True, output: Any = None) -> httpx.Response:
    url, body = (
        (item["complete_url"], {"task_token": item["task_token"], "output": output or {"done": True}})
        if ok
        else (item["fail_url"], {"task_token": item["task_token"], "error": "broken", "retryable": False})
    )
    return httpx.post(base + url, json=body, timeout=30)


def heartbeat(tenant: Tenant, item: dict[str, Any], **extra: Any) -> httpx.Response:
    body = {"lease_id": item["lease_id"], "extend_s": 5, **extra}
    return httpx.post(tenant.base + item["heartbeat_url"], json=body, headers=tenant.worker, timeout=30)


def one_step(action: str, **step: Any) -> dict[str, Any]:
    """An intent of one remote step (target staging: an Executor may run it)."""
    return {"name": f"one-{action}", "definition": {"target": "staging", "steps": [{"action": action, **step}]}}


@contextmanager
def worker_running(base_url: str, token: str, *extra: str) -> Iterator[None]:
    """The example worker on a thread, leasing with its tenant's Module.Worker token, until the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []
    options = remote_worker.parse_args(["--api", base_url, "--token", token, "--lease-s", "15", *extra])

    def loop() -> None:
        try:
            remote_worker.run(options, stop)
        except Exception as exc:  # surfaced after the block
            errors.append(exc)

    thread = threading.Thread(target=loop, name="example-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=40)
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
        if page["status"] in TERMINAL and not page["items"]:
            return events
    raise AssertionError(f"execution {execution_id} did not finish: {[e['type'] for e in events]}")


@pytest.fixture
def platform(devhost_factory: DevhostFactory) -> Any:
    return devhost_factory(app_dir=PROJECT_ROOT, extra_args=("--seed-demo",))


# ------------------------------------------------------------------------------------------------- tests
def test_example_worker_runs_the_seed_tutorial_to_success(platform: Any, pg: Any) -> None:
    fabrikam = Tenant(platform, pg, "fabrikam")
    execution_id = fabrikam.start(SEED_WEB_APP)
    with worker_running(platform.base_url, fabrikam.worker_token):
        events = follow(platform.base_url, fabrikam.headers, execution_id)

    types = [e["type"] for e in events]
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
    execution = fabrikam.execution(execution_id)
    assert execution["status"] == "succeeded"
    for step in execution["steps"]:
        assert step["state"] == "succeeded", step
        assert [a["remote"] for a in step["attempts"]] == [True]
    assert fabrikam.queue(execution_id=execution_id).json()["items"] == []  # nothing left open


def test_a_tenants_worker_never_sees_or_touches_another_tenants_work(platform: Any, pg: Any) -> None:
    fabrikam, contoso = Tenant(platform, pg, "fabrikam"), Tenant(platform, pg, "contoso")
    execution_id = fabrikam.start(one_step("build-container", image="secret-app:1"))
    fabrikam.wait_for(execution_id, lambda e: e["status"] == "waiting")

    # contoso's worker asks for every action it could: none of fabrikam's items come back, and its list is blind.
    for _ in range(3):
        answer = contoso.lease(sorted(remote_worker.HANDLERS))
        assert answer.status_code == 200, answer.text
        assert all(item["execution_id"] != execution_id for item in answer.json()["items"])
    assert contoso.queue(execution_id=execution_id).json()["items"] == []
    queued = fabrikam.queue(execution_id=execution_id).json()["items"]
    assert [(i["step_id"], i["status"], i["attempt"]) for i in queued] == [("build-container", "queued", 1)]
    assert "waiting for a worker for build-container" in fabrikam.execution(execution_id)["wait_reason"]

    # A person's token without Module.Worker cannot lease; a worker token reads no execution.
    assert (
        httpx.post(
            f"{platform.base_url}/api/v1/work/lease", json={"actions": ["build-container"]}, headers=fabrikam.headers
        ).status_code
        == 403
    )
    assert httpx.get(f"{platform.base_url}/api/v1/executions/{execution_id}", headers=fabrikam.worker).status_code in (
        403,
        404,
    )

    item = fabrikam.lease_item(execution_id, "build-container")
    assert item["params"]["image"] == "secret-app:1"
    # contoso cannot heartbeat it (404: not its item), even with the right lease id; fabrikam can.
    assert heartbeat(contoso, item).status_code == 404
    assert heartbeat(fabrikam, item).json()["state"] == "leased"
    assert report(platform.base_url, item).status_code == 200
    assert fabrikam.wait_for(execution_id, lambda e: e["status"] in TERMINAL)["status"] == "succeeded"


def test_workers_racing_for_an_item_get_it_once(platform: Any, pg: Any) -> None:
    fabrikam = Tenant(platform, pg, "fabrikam")
    execution_id = fabrikam.start(one_step("push-to-registry", registry="r.io", image="race:1"))
    fabrikam.wait_for(execution_id, lambda e: e["status"] == "waiting")

    def lease_once(_: int) -> list[dict[str, Any]]:
        response = fabrikam.lease(["push-to-registry"], wait_s=2)
        assert response.status_code == 200, response.text
        return [i for i in response.json()["items"] if i["execution_id"] == execution_id]

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = [item for items in pool.map(lease_once, range(8)) for item in items]
    assert len(got) == 1, got
    assert report(platform.base_url, got[0]).status_code == 200


def test_an_expired_lease_is_the_next_attempt_and_its_late_result_is_refused(platform: Any, pg: Any) -> None:
    fabrikam = Tenant(platform, pg, "fabrikam")
    retry = {"max_attempts": 2, "initial_interval_s": 0.1}
    execution_id = fabrikam.start(one_step("deploy-to-kubernetes", namespace="n", retry=retry))
    first = fabrikam.lease_item(execution_id, "deploy-to-kubernetes", lease_s=5)
    assert first["attempt"] == 1
    # The worker crashes: no heartbeat, no result. Its lease runs out; the next lease call ends the attempt, the
    # step's retry policy queues attempt 2, and a worker gets that.
    time.sleep(6)
    second = fabrikam.lease_item(execution_id, "deploy-to-kubernetes")
    assert second["attempt"] == 2 and second["id"] != first["id"]
    late = report(platform.base_url, first)
    assert late.status_code == 409, late.text
    assert heartbeat(fabrikam, first).status_code == 409
    assert report(platform.base_url, second).status_code == 200
    execution = fabrikam.wait_for(execution_id, lambda e: e["status"] in TERMINAL)
    assert execution["status"] == "succeeded"
    attempts = execution["steps"][0]["attempts"]
    assert [(a["attempt"], a["state"]) for a in attempts] == [(1, "timed_out"), (2, "succeeded")]
    assert "lease expired" in attempts[0]["error"]


def test_heartbeats_keep_a_long_item_alive_past_its_lease(platform: Any, pg: Any) -> None:
    fabrikam = Tenant(platform, pg, "fabrikam")
    execution_id = fabrikam.start(one_step("build-container", image="long:1", retry={"max_attempts": 1}))
    item = fabrikam.lease_item(execution_id, "build-container", lease_s=5)
    for percent in (20, 40, 60, 80):  # 12 s of work, more than twice the lease
        time.sleep(3)
        beat = heartbeat(fabrikam, item, progress={"percent": percent, "message": f"layer {percent // 20}"})
        assert beat.status_code == 200 and beat.json()["state"] == "leased", beat.text
    reason = fabrikam.execution(execution_id)["wait_reason"]
    assert "a worker is running build-container" in reason and "80 %" in reason and "layer 4" in reason, reason
    listed = fabrikam.queue(execution_id=execution_id, status="leased").json()["items"]
    assert [(i["status"], i["progress"]["percent"]) for i in listed] == [("leased", 80)]
    assert report(platform.base_url, item).status_code == 200
    execution = fabrikam.wait_for(execution_id, lambda e: e["status"] in TERMINAL)
    assert execution["status"] == "succeeded"
    assert [a["attempt"] for a in execution["steps"][0]["attempts"]] == [1]


def test_a_cancel_removes_queued_work_and_tells_a_leased_worker(platform: Any, pg: Any) -> None:
    fabrikam = Tenant(platform, pg, "fabrikam")
    body = {
        "name": "two-builds",
        "definition": {
            "target": "staging",
            "steps": [
                {"id": "a", "action": "build-container", "image": "a:1", "depends_on": []},
                {"id": "b", "action": "push-to-registry", "registry": "r.io", "image": "b:1", "depends_on": []},
            ],
        },
    }
    execution_id = fabrikam.start(body)
    leased = fabrikam.lease_item(execution_id, "a", action="build-container")
    fabrikam.wait_for(execution_id, lambda e: e["status"] == "waiting")
    assert [i["step_id"] for i in fabrikam.queue(execution_id=execution_id, status="queued").json()["items"]] == ["b"]

    cancelled = httpx.post(
        f"{platform.base_url}/api/v1/executions/{execution_id}/cancel", headers=fabrikam.headers, timeout=30
    )
    assert cancelled.status_code == 202, cancelled.text
    # The queued item is gone at once: no worker can lease it any more.
    assert fabrikam.queue(execution_id=execution_id, status="queued").json()["items"] == []
    answer = fabrikam.lease(["push-to-registry"])
    assert all(item["execution_id"] != execution_id for item in answer.json()["items"])
    # The worker holding `a` hears it on its next heartbeat; its result would no longer count.
    beat = heartbeat(fabrikam, leased)
    assert beat.status_code == 200 and beat.json() == {
        "id": leased["id"],
        "state": "cancelled",
        "lease_expires_at": None,
    }
    assert report(platform.base_url, leased).status_code == 409
    execution = fabrikam.wait_for(execution_id, lambda e: e["status"] in TERMINAL, timeout=30)
    assert execution["status"] == "cancelled"
    assert {s["step_id"]: s["state"] for s in execution["steps"]} == {"a": "cancelled", "b": "cancelled"}


def test_task_tokens_are_single_use_unforgeable_and_bound_to_their_step(platform: Any, pg: Any) -> None:
    fabrikam = Tenant(platform, pg, "fabrikam")
    execution_id = fabrikam.start(SEED_WEB_APP)
    item = fabrikam.lease_item(execution_id, "build-docker-image")
    assert item["phase"] == "run" and item["attempt"] == 1
    assert item["complete_url"] == f"/api/v1/executions/{execution_id}/steps/build-docker-image/complete"
    assert item["idempotency_key"] == f"{execution_id}:build-docker-image:run:1"
    task_token, output = item["task_token"], {"image": "myapp:latest"}

    def complete(url: str, task_token: str) -> httpx.Response:
        return httpx.post(platform.base_url + url, json={"task_token": task_token, "output": output}, timeout=30)

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
    # The same result again is answered as the first (a worker retrying a hand-over it did not see confirmed);
    # another result with the spent token is refused.
    assert complete(item["complete_url"], task_token).status_code == 200
    other = httpx.post(
        platform.base_url + item["complete_url"], json={"task_token": task_token, "output": {"image": "x"}}, timeout=30
    )
    assert other.status_code == 409
    late_fail = httpx.post(
        platform.base_url + item["fail_url"], json={"task_token": task_token, "error": "late"}, timeout=30
    )
    assert late_fail.status_code == 409
    httpx.post(f"{platform.base_url}/api/v1/executions/{execution_id}/cancel", headers=fabrikam.headers, timeout=30)
    # Waited for: left running, it held fabrikam's quota for the session's later tests (a quota of 1 answered 429).
    fabrikam.wait_for(execution_id, lambda execution: execution["status"] in TERMINAL)


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
                # The platform's own work: no group of anyone's may read it (ADR 0027).
                ("/devhost/eventhubs/module-work/consumergroups/example-worker/events", {}, 403),
                ("/devhost/eventhubs/module-work/consumergroups/module-worker/events", {}, 403),
            ]:
                assert (await client.get(path, params=params)).status == status, path

    asyncio.run(scenario())
