# intent_ref: platform.execution
"""The example remote worker against the app (ADR 0027, amended 2026-12-05): a lease's items all keep their leases
while a slow one runs, an item whose lease is gone is never started, a network outage neither stops it nor loses a
finished result, and the key it documents for once-per-step effects survives a lost lease where `idempotency_key`
does not."""

from __future__ import annotations

import re
import shlex
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg_pool import ConnectionPool

from examples.workers import remote_worker
from shared.api.durable import get_durable_client
from shared.api.routers.work import LeasedItem
from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine import work_queue
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]
ACTION = "build-container"
README = Path(remote_worker.__file__).with_name("README.md")


class Recording:
    """The durable client: ended attempts' verdicts go nowhere here, there is no orchestration."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, str, Any]] = []

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        self.raised.append((instance_id, name, data))


@pytest.fixture
def durable(api: ApiHarness) -> Iterator[Recording]:  # noqa: F811  # the fixture
    recording = Recording()
    app = cast(FastAPI, api.client.app)
    app.dependency_overrides[get_durable_client] = lambda: recording
    yield recording
    app.dependency_overrides.pop(get_durable_client)


@pytest.fixture
def worker(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> tuple[uuid.UUID, str]:  # noqa: F811  # the fixture
    """A tenant and its worker's token."""
    # The worker builds its client from httpx.Client(base_url=...); for the test's length that is the app's client.
    monkeypatch.setattr(httpx, "Client", lambda base_url: api.client)
    name = f"example-{uuid.uuid4().hex[:6]}"
    tenant = api.provision(name).id
    return tenant, api.token(name, ["Module.Worker"], claims={"idtyp": "app"})


def _queue(pool: ConnectionPool[Any], tenant: uuid.UUID, key: AttemptKey | None = None) -> AttemptKey:
    """Queue attempt 1 of a new execution's one remote step, or `key` (a later attempt of that step)."""
    if key is None:
        key = AttemptKey(_execution(pool, tenant, path=["running"]).id, "build", "run", 1)
        with tenant_transaction(tenant, pool=pool) as conn:
            store.seed_steps(conn, key.execution_id, [StepSeed("build", ACTION, 3)])
    with tenant_transaction(tenant, pool=pool) as conn:
        store.begin_attempt(conn, key, action=ACTION, remote=True, step_state="waiting")
        work_queue.enqueue(conn, key, action=ACTION, params={"image": "app"}, timeout_s=600)
    return key


def _options(token: str, *extra: str) -> Any:
    return remote_worker.parse_args(["--api", "http://testserver", "--token", token, "--action", ACTION, *extra])


def _lease(api: ApiHarness, token: str, *, lease_s: float = 60) -> list[dict[str, Any]]:  # noqa: F811
    body = {"actions": [ACTION], "max_items": 10, "lease_s": lease_s, "wait_s": 0, "worker": "test"}
    response = api.client.post("/api/v1/work/lease", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _expire(pool: ConnectionPool[Any], tenant: uuid.UUID, item: dict[str, Any]) -> None:
    """The lease runs out (a partition, a long pause) without waiting for it."""
    with tenant_transaction(tenant, pool=pool) as conn:
        conn.execute(
            "UPDATE app.work_items SET lease_expires_at = clock_timestamp() - interval '1 second' WHERE id = %s",
            (item["id"],),
        )


def _state(pool: ConnectionPool[Any], tenant: uuid.UUID, key: AttemptKey) -> str:
    with tenant_transaction(tenant, pool=pool) as conn:
        attempt = store.get_attempt(conn, key)
    assert attempt is not None
    return attempt.state


def test_every_item_of_a_lease_keeps_its_lease_while_a_slow_one_runs(
    app_pool: ConnectionPool[Any], worker: tuple[uuid.UUID, str], durable: Recording
) -> None:
    tenant, token = worker
    keys = [_queue(app_pool, tenant) for _ in range(2)]
    # Each item takes longer than its lease: run one after the other, the second's lease would run out meanwhile.
    options = _options(token, "--once", "--max-items", "2", "--lease-s", "5", "--work-seconds", "6")
    assert remote_worker.run(options) == 0
    assert [_state(app_pool, tenant, key) for key in keys] == ["succeeded", "succeeded"]
    assert not [data for _, _, data in durable.raised if not data.get("ok")]  # no attempt timed out


def test_an_item_whose_lease_is_gone_is_not_started(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    worker: tuple[uuid.UUID, str],
    durable: Recording,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, token = worker
    key = _queue(app_pool, tenant)
    (item,) = _lease(api, token, lease_s=5)
    _expire(app_pool, tenant, item)
    ran: list[dict[str, Any]] = []

    def handler(params: dict[str, Any], options: Any) -> dict[str, Any]:
        ran.append(params)
        return {}

    monkeypatch.setitem(remote_worker.HANDLERS, ACTION, handler)
    options = _options(token)
    outcome = remote_worker.handle_item(
        item, remote_worker.Api(api.client, remote_worker.TokenSource(options)), options
    )
    assert outcome == "lease lost"
    assert ran == []  # no work done without a lease
    assert _state(app_pool, tenant, key) == "dispatched"  # nothing reported: the expiry ends it, as timed out


class Outage:
    """The app's client behind a network that goes down once the first heartbeat got through (the work has started):
    the next `refusals` calls get no connection, then it is back."""

    def __init__(self, client: Any, refusals: int) -> None:
        self._client, self.left = client, refusals
        self._down = False
        self._lock = threading.Lock()

    def __enter__(self) -> Outage:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        with self._lock:
            if self._down and self.left > 0:
                self.left -= 1
                raise httpx.ConnectError(f"connection refused: {url}")
        response: httpx.Response = self._client.post(url, **kwargs)
        if url.endswith("/heartbeat"):
            with self._lock:
                self._down = True
        return response


def _until(check: Any, limit_s: float = 60.0) -> None:
    end = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < end, "not reached"
        time.sleep(0.1)


def test_a_network_outage_neither_stops_the_worker_nor_loses_its_finished_result(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    worker: tuple[uuid.UUID, str],
    durable: Recording,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The outage outlasts the heartbeat after the work and the first sending of its result: each of them gave up
    # after its tries and the exception ended the worker, the finished work never reported (its lease timed out).
    tenant, token = worker
    outage = Outage(api.client, refusals=3 * remote_worker._POST_ATTEMPTS)
    monkeypatch.setattr(httpx, "Client", lambda base_url: outage)
    monkeypatch.setattr(remote_worker.Api, "_delay", staticmethod(lambda response, attempt: 0.0))
    monkeypatch.setattr(remote_worker, "_RESEND_S", 0.0)
    monkeypatch.setattr(remote_worker, "LONG_POLL_S", 1.0)
    first = _queue(app_pool, tenant)
    stop, failures = threading.Event(), []

    def work() -> None:
        try:
            remote_worker.run(_options(token, "--lease-s", "60", "--work-seconds", "0.2"), stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        _until(lambda: _state(app_pool, tenant, first) != "dispatched" or not thread.is_alive())
        assert failures == [] and thread.is_alive()
        assert outage.left == 0  # the network was down all that while, and came back
        assert _state(app_pool, tenant, first) == "succeeded"
        second = _queue(app_pool, tenant)  # and it leases on
        _until(lambda: _state(app_pool, tenant, second) != "dispatched" or not thread.is_alive())
        assert _state(app_pool, tenant, second) == "succeeded"
    finally:
        stop.set()
        thread.join(30.0)
    assert failures == [] and not thread.is_alive()


def test_the_step_key_survives_a_lost_lease_and_the_idempotency_key_does_not(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    worker: tuple[uuid.UUID, str],
    durable: Recording,
) -> None:
    tenant, token = worker
    key = _queue(app_pool, tenant)
    (first,) = _lease(api, token)
    _expire(app_pool, tenant, first)  # its worker is partitioned away and may still be at work
    assert _lease(api, token) == []  # this call ends the expired lease's attempt
    assert _state(app_pool, tenant, key) == "timed_out"
    _queue(app_pool, tenant, AttemptKey(key.execution_id, key.step_id, key.phase, 2))  # the retry policy's next
    (second,) = _lease(api, token)

    assert first["idempotency_key"] != second["idempotency_key"]
    assert remote_worker.step_key(first) == remote_worker.step_key(second) == f"{key.execution_id}:build:run"


def test_the_worker_docs_say_what_the_idempotency_key_does_not_cover() -> None:
    readme = README.read_text()
    for text in (readme, remote_worker.DESCRIPTION):
        assert "after a lost lease finds its earlier effect" not in " ".join(text.split())
        assert "delivered again after a lease expired" not in " ".join(text.split())
    assert "`<execution_id>:<step_id>:<phase>`" in readme
    assert "<execution_id>:<step_id>:<phase>" in remote_worker.DESCRIPTION
    # The documented key is built from fields the lease answer has and the README lists.
    listed = readme.split("→ {", 1)[1].split("POST", 1)[0]
    for name in ("execution_id", "step_id", "phase"):
        assert name in LeasedItem.model_fields and f'"{name}"' in listed


def test_the_readme_worker_commands_parse_as_pasted() -> None:
    commands = re.findall(r"^\.venv/bin/python -m examples\.workers\.remote_worker (.+)$", README.read_text(), re.M)
    assert commands
    for command in commands:
        remote_worker.parse_args(shlex.split(command))


class BusyTenant:
    """The app's client for a tenant whose other callers use up its request rate once the work has started (the first
    heartbeat got through): its bucket is emptied before each heartbeat, which the platform's rate limit then answers
    429 with Retry-After, until `refusals` heartbeats were so answered; then the others go quiet and it refills."""

    def __init__(self, client: Any, admin_url: str, tenant: uuid.UUID, refusals: int) -> None:
        self._client, self._admin_url, self._tenant = client, admin_url, tenant
        self.left, self.refused = refusals, 0
        self._busy = False
        self._lock = threading.Lock()

    def __enter__(self) -> BusyTenant:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def _bucket(self, tokens: float) -> None:
        with psycopg.connect(self._admin_url, dbname="quantum", autocommit=True) as admin:
            admin.execute(
                "UPDATE app.rate_buckets SET tokens = %s, updated_at = clock_timestamp() WHERE tenant_id = %s",
                (tokens, self._tenant),
            )

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        heartbeat = url.endswith("/heartbeat")
        with self._lock:
            if heartbeat and self._busy and self.left > 0:
                self._bucket(0)
            response: httpx.Response = self._client.post(url, **kwargs)
            if heartbeat and response.status_code == 429 and self.left > 0:
                self.refused += 1
                self.left -= 1
                if self.left == 0:
                    self._bucket(100)
            self._busy = self._busy or heartbeat
        return response


def test_a_rate_limited_tenants_worker_keeps_its_lease_and_completes(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    durable: Recording,
) -> None:
    name = f"example-busy-{uuid.uuid4().hex[:6]}"
    tenant = api.provision(name, quotas={"requests_per_minute": 60, "burst": 100}).id
    token = api.token(name, ["Module.Worker"], claims={"idtyp": "app"})
    key = _queue(app_pool, tenant)
    (item,) = _lease(api, token, lease_s=20)
    # More refused heartbeats than the tries of a call, for each of the two that may beat at once (the heartbeats'
    # thread and the one after the work): every try of a beat was answered 429 while the lease was live.
    refusals = 2 * remote_worker._POST_ATTEMPTS + 1
    busy = BusyTenant(api.client, api.admin_url, tenant, refusals=refusals)
    options = _options(token, "--lease-s", "20", "--work-seconds", "8")
    outcome = remote_worker.handle_item(item, remote_worker.Api(busy, remote_worker.TokenSource(options)), options)
    assert outcome.startswith("completed"), outcome
    assert busy.refused == refusals  # the heartbeats were rate limited
    assert _state(app_pool, tenant, key) == "succeeded"


def test_an_output_the_platform_cannot_store_fails_the_attempt_for_good(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    worker: tuple[uuid.UUID, str],
    durable: Recording,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, token = worker
    key = _queue(app_pool, tenant)
    (item,) = _lease(api, token)
    monkeypatch.setitem(remote_worker.HANDLERS, ACTION, lambda params, options: {"n": 2**64})
    options = _options(token)
    outcome = remote_worker.handle_item(
        item, remote_worker.Api(api.client, remote_worker.TokenSource(options)), options
    )
    assert outcome.startswith("failed"), outcome
    with tenant_transaction(tenant, pool=app_pool) as conn:
        attempt = store.get_attempt(conn, key)
    assert attempt is not None and (attempt.state, attempt.retryable) == ("failed", False), attempt
    assert attempt.error is not None and "refused the output (422)" in attempt.error
