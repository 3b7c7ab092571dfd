# intent_ref: platform.execution
"""The example remote worker against the app (ADR 0027, amended 2026-12-05): a lease's items all keep their leases
while a slow one runs, an item whose lease is gone is never started, and the key it documents for once-per-step
effects survives a lost lease where `idempotency_key` does not."""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
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
