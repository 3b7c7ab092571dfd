# intent_ref: platform.execution
"""Cancels of an execution whose orchestration has not started, racing each other or the orchestration's start."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from shared.api.durable import get_durable_client
from shared.api.routers import execution_control
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import work_queue
from shared.engine.protocol import CANCEL_EVENT
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

ROLES = ["Tenant.Admin", "Intent.Reader", "Intent.Author", "Intent.Executor", "Intent.Deployer"]
WAIT_INTENT = {"target": "staging", "steps": [{"action": "wait", "seconds": 1}]}


class NotStarted:
    """A durable client whose orchestrations have not started: every raise fails as for a missing instance."""

    async def start_new(self, _name: str, instance_id: str, _input: Any) -> str:
        return instance_id

    async def raise_event(self, *_args: Any) -> None:
        raise RuntimeError("no such instance")


class StartsDuringCancel(NotStarted):
    """The orchestration starts right after the cancel's first raise failed: its move to running holds the row
    until another transaction waits for it, so a cancel that read `pending` decides on a status it no longer has.
    """

    def __init__(self, api: ApiHarness, tenant_id: uuid.UUID) -> None:
        self.api, self.tenant_id = api, tenant_id
        self.raised: list[tuple[str, str, Any]] = []
        self.starter: threading.Thread | None = None

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        if self.starter is None:
            locked = threading.Event()
            self.starter = threading.Thread(target=self._start, args=(uuid.UUID(instance_id), locked), daemon=True)
            self.starter.start()
            assert locked.wait(10), "the start did not take the row"
            raise RuntimeError("no such instance")
        self.raised.append((instance_id, name, data))

    def _start(self, execution_id: uuid.UUID, locked: threading.Event) -> None:
        with tenant_transaction(self.tenant_id) as conn:
            repo.transition(conn, execution_id, "running")
            row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
            assert row is not None
            locked.set()
            _until_someone_waits_for(self.api, row["pid"])


def _until_someone_waits_for(api: ApiHarness, holder: int, timeout_s: float = 10.0) -> None:
    """Block until another session waits for a lock `holder` holds (bounded: a route that never waits goes on)."""
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin:
        for _ in range(int(timeout_s / 0.02)):
            waiting = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder,)
            ).fetchone()
            if waiting is not None and waiting[0] > 0:
                return
            time.sleep(0.02)


@pytest.fixture
def tenant(api: ApiHarness) -> Iterator[tuple[str, dict[str, str], str]]:
    """A tenant, its headers and a pending execution's URL (started against a client that runs nothing)."""
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    api.provision(name, allowed_modules=["wait"], quotas={"requests_per_minute": 100000, "burst": 10000})
    headers = api.headers(name, ROLES)
    intent = api.client.post("/api/v1/intents", json={"name": "w", "definition": WAIT_INTENT}, headers=headers)
    assert intent.status_code == 201, intent.text
    api.client.app.dependency_overrides[get_durable_client] = NotStarted
    try:
        started = api.client.post(f"/api/v1/intents/{intent.json()['id']}/execute", json={}, headers=headers)
        assert started.status_code == 202, started.text
        yield name, headers, started.headers["location"]
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client, None)


def _events(api: ApiHarness, url: str, headers: dict[str, str]) -> list[str]:
    listed = api.client.get(f"{url}/events", headers=headers)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    return [event["type"] for event in body["items"]]


def test_concurrent_cancels_of_an_unstarted_execution_end_it_once(
    api: ApiHarness, tenant: tuple[str, dict[str, str], str]
) -> None:
    _, headers, url = tenant
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: api.client.post(f"{url}/cancel", headers=headers), range(8)))

    # Each answers as a cancel of a pending execution (202, cancelled) or of a cancelled one (409), never 500.
    assert {answer.status_code for answer in answers} <= {202, 409}, [(a.status_code, a.text) for a in answers]
    accepted = [answer.json() for answer in answers if answer.status_code == 202]
    assert accepted and all(body["status"] == "cancelled" for body in accepted)
    assert all(a.json()["type"].endswith("already-finished") for a in answers if a.status_code == 409)
    assert api.client.get(url, headers=headers).json()["status"] == "cancelled"
    assert _events(api, url, headers).count("execution_cancelled") == 1


def test_a_start_that_wins_the_race_is_cancelled_through_its_orchestration(
    api: ApiHarness, tenant: tuple[str, dict[str, str], str]
) -> None:
    name, headers, url = tenant
    execution_id = url.rstrip("/").rsplit("/", 1)[-1]
    client = StartsDuringCancel(api, api.tenants[name].id)
    api.client.app.dependency_overrides[get_durable_client] = lambda: client

    answer = api.client.post(f"{url}/cancel", headers=headers)
    assert client.starter is not None
    client.starter.join(10)

    # Not ended here without compensation: the running orchestration is told, as for any started execution.
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"execution_id": execution_id, "status": "running", "cancel_requested": True}
    assert api.client.get(url, headers=headers).json()["status"] == "running"
    assert "execution_cancelled" not in _events(api, url, headers)
    assert [(instance, event) for instance, event, _ in client.raised] == [(execution_id, "cancel")]


class Running:
    """A durable client whose orchestrations run: every raise is taken."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        with self._lock:
            self.raised.append((instance_id, name))


def test_a_cancel_read_before_a_concurrent_one_committed_raises_nothing_it_handed_over(
    api: ApiHarness, tenant: tuple[str, dict[str, str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, headers, url = tenant
    execution_id = uuid.UUID(url.rstrip("/").rsplit("/", 1)[-1])
    with tenant_transaction(api.tenants[name].id) as conn:
        repo.transition(conn, execution_id, "running")
    client = Running()
    api.client.app.dependency_overrides[get_durable_client] = lambda: client
    second_read, first_answered = threading.Event(), threading.Event()
    resource_of, ending = execution_control.execution_resource, work_queue.cancel_queued
    reads: list[int] = []

    def read(*args: Any) -> Any:
        """The second cancel has read the execution (its cancel not yet committed) and goes on once the first was
        answered, its raise taken and marked handed over."""
        reads.append(1)
        if len(reads) == 2:
            second_read.set()
            assert first_answered.wait(15), "the first cancel did not answer"
        return resource_of(*args)

    def held_open(conn: Any, execution: uuid.UUID) -> Any:
        """The first cancel commits once the second has read the execution."""
        assert second_read.wait(15), "the second cancel did not read the execution"
        return ending(conn, execution)

    monkeypatch.setattr(execution_control, "execution_resource", read)
    monkeypatch.setattr(work_queue, "cancel_queued", held_open)

    def first() -> Any:
        answer = api.client.post(f"{url}/cancel", headers=headers)
        first_answered.set()
        return answer

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = [pool.submit(first)]
        while not reads:
            time.sleep(0.01)
        answers.append(pool.submit(api.client.post, f"{url}/cancel", headers=headers))
        results = [answer.result(30) for answer in answers]

    assert [answer.status_code for answer in results] == [202, 202], [answer.text for answer in results]
    # The second decided on its read made before the first committed (no cancel requested) and raised it again.
    assert client.raised == [(str(execution_id), CANCEL_EVENT)]
