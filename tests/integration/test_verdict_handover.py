# intent_ref: platform.execution
"""A recorded remote verdict reaches its orchestration (ADR 0027, amendment 2026-12-05): a completion whose raise
failed answers 503 and the worker's repeat of the same result raises it again, and a lease that ends stale work
raises the verdicts of what it ended."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import control, remote, work_queue
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.payloads import BLOB_REF
from shared.engine.steps import AttemptKey
from shared.storage.blob import request_container
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_dispatch_race import _queued
from tests.security.test_task_token_no_trace import RemoteAttempt, remote_attempt

pytestmark = pytest.mark.integration
TRANSIENT = "503 from the task hub"
GONE = "No instance with ID '{}' found."


class FlakyDurable:
    """The request's Durable client: each raise fails with the next of `failures` (None: it is delivered)."""

    def __init__(self, *failures: str | None) -> None:
        self.failures = list(failures)
        self.delivered: list[tuple[str, str, Any]] = []

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise RuntimeError(failure.format(instance_id))
        self.delivered.append((instance_id, name, data))


@pytest.fixture
def durable(api: ApiHarness) -> Iterator[FlakyDurable]:
    client = FlakyDurable()
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    yield client
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision("handover").id


def big_output(marker: str) -> dict[str, Any]:
    """Over the inline limit, so the recorded output is a blob reference."""
    return {"marker": marker, "padding": "x" * (get_settings().QP_PAYLOAD_INLINE_MAX_BYTES + 1)}


def report(api: ApiHarness, attempt: RemoteAttempt, body: dict[str, Any]) -> Any:
    url = attempt.url() if "output" in body else attempt.url().replace("/complete", "/fail")
    return api.client.post(url, json={"task_token": attempt.token, **body})


def recorded(pool: ConnectionPool[Any], attempt: RemoteAttempt) -> tuple[store.Attempt, list[str]]:
    with tenant_transaction(attempt.tenant_id, pool=pool) as conn:
        found = store.get_attempt(conn, attempt.key)
        events = [event.type for event in repo.events_after(conn, attempt.key.execution_id, 0, 1000)]
    assert found is not None
    return found, events


# Built when a test runs: the inline limit is the settings' of the test's app.
RESULTS: dict[str, Callable[[], dict[str, Any]]] = {
    "completed": lambda: {"output": {"image": "myapp:1.2.3", "layers": [1, 2.5, True, None]}},
    "completed-big": lambda: {"output": big_output("worker")},
    "failed": lambda: {"error": "registry returned 503", "retryable": True},
}


@pytest.mark.parametrize("case", list(RESULTS))
def test_a_repeated_result_delivers_the_verdict_whose_first_raise_failed(
    case: str,
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    durable.failures = [TRANSIENT]
    body = RESULTS[case]()

    first = report(api, attempt, body)
    assert first.status_code == 503, first.text
    assert first.headers["content-type"].startswith("application/problem+json")
    assert first.headers["retry-after"].isdigit()
    assert first.json()["type"].endswith("/orchestration-unavailable")
    assert durable.delivered == []
    state, events = recorded(app_pool, attempt)  # recorded and spent all the same: what the repeat finds

    again = report(api, attempt, body)
    assert again.status_code == 200, again.text
    assert again.json()["state"] == ("succeeded" if "output" in body else "failed")
    assert durable.delivered == [(str(attempt.key.execution_id), "run:build:1", state.verdict())]
    assert durable.delivered[0][2]["ok"] is ("output" in body)
    # Once delivered, a repeat still answers the same (the worker may not have seen the 200), writes nothing and
    # raises nothing more (amended 2026-12-07): the delivery is recorded as handed over.
    assert report(api, attempt, body).status_code == 200
    assert len(durable.delivered) == 1
    assert recorded(app_pool, attempt) == (dataclasses.replace(state, delivery="handed_over"), events)


def test_a_repeat_is_delivered_after_the_host_died_between_recording_and_raising(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    # What a host killed after the commit leaves: the result recorded and the token spent, nothing raised.
    recorded = remote.record(
        attempt.token, attempt.key.execution_id, "build", "run", remote.RemoteResult(ok=True, output={"image": "x"})
    )
    key, verdict = recorded.key, recorded.verdict
    # The lease may run out while the worker waits to retry: the recorded result is still raised again.
    with tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute(
            "UPDATE app.work_items SET lease_expires_at = clock_timestamp() - interval '1 minute'"
            " WHERE execution_id = %s",
            (attempt.key.execution_id,),
        )
    again = report(api, attempt, {"output": {"image": "x"}})
    assert again.status_code == 200, again.text
    assert durable.delivered == [(str(key.execution_id), key.event_name, verdict)]


SPENT: dict[str, Callable[[], tuple[dict[str, Any], dict[str, Any]]]] = {
    "another-output": lambda: ({"output": {"image": "x"}}, {"output": {"image": "y"}}),
    "a-boolean-for-a-number": lambda: ({"output": {"replicas": 1}}, {"output": {"replicas": True}}),
    "another-big-output": lambda: ({"output": big_output("worker")}, {"output": big_output("attacker")}),
    "a-failure-after-a-success": lambda: ({"output": {"image": "x"}}, {"error": "x", "retryable": True}),
    "a-success-after-a-failure": lambda: ({"error": "x", "retryable": False}, {"output": None}),
    "another-error": lambda: ({"error": "x", "retryable": True}, {"error": "y", "retryable": True}),
    "another-retryable": lambda: ({"error": "x", "retryable": True}, {"error": "x", "retryable": False}),
}


@pytest.mark.parametrize("case", list(SPENT))
def test_another_result_with_a_spent_token_is_409_and_raises_nothing(
    case: str,
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    first, other = SPENT[case]()
    assert report(api, attempt, first).status_code == 200
    before = recorded(app_pool, attempt)

    refused = report(api, attempt, other)
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("/task-token-used")
    assert len(durable.delivered) == 1  # the first result's only
    assert recorded(app_pool, attempt) == before


@pytest.mark.parametrize("damage", ["deleted", "altered"])
def test_another_result_after_the_stored_output_is_gone_or_altered_is_409(
    damage: str, api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    # Comparing with the recorded output read its blob, and a blob that could not be read answered 500.
    attempt = remote_attempt(app_pool, tenant)
    assert report(api, attempt, {"output": big_output("worker")}).status_code == 200
    state, _ = recorded(app_pool, attempt)
    name = state.output[BLOB_REF]["name"]
    container = request_container(get_settings())
    if damage == "deleted":
        container.delete_blob(name)
    else:
        body = container.download_blob(name).readall()
        container.upload_blob(name, body.replace(b'"worker"', b'"hacker"'), overwrite=True)
    refused = report(api, attempt, {"output": big_output("other")})
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("/task-token-used")
    assert len(durable.delivered) == 1


def test_a_raise_to_a_gone_orchestration_answers_200(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
) -> None:
    # Nobody waits and a retry could not deliver it: the worker must not be told to try again.
    attempt = remote_attempt(app_pool, tenant)
    durable.failures = [GONE]
    answered = report(api, attempt, {"output": {"image": "x"}})
    assert answered.status_code == 200, answered.text
    assert durable.delivered == []


# ---------------------------------------------------------------------------- stale work ended by the lease
class CommittedCheck(FlakyDurable):
    """Records, with each raise, the attempt's state as another transaction sees it: a verdict raised before the
    lease's transaction commits would reach an orchestration that cannot read it yet."""

    def __init__(self, pool: ConnectionPool[Any], tenant_id: uuid.UUID) -> None:
        super().__init__()
        self.pool, self.tenant_id = pool, tenant_id
        self.seen: dict[str, str | None] = {}

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        key = AttemptKey(uuid.UUID(instance_id), "build", "run" if name.startswith("run:") else "compensate", 1)
        with tenant_transaction(self.tenant_id, pool=self.pool) as conn:
            found = store.get_attempt(conn, key)
        self.seen[instance_id] = found.state if found is not None else None
        await super().raise_event(instance_id, name, data)


def test_a_lease_that_ends_stale_items_raises_their_verdicts(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    handle = api.provision("stale-lease")
    action = f"stale-{uuid.uuid4().hex[:6]}"
    cancelled = _queued(app_pool, handle.id, action, path=["running"])
    ended = _queued(app_pool, handle.id, action, path=["running", "compensating"], phase="compensate")
    with tenant_transaction(handle.id, pool=app_pool) as conn:
        # A cancel and an end that missed the items (ADR 0027, amendment 2026-12-05): only the lease finds them.
        control.request_cancel(conn, cancelled.execution_id, "alice")
        repo.transition(conn, ended.execution_id, "failed", error="ended elsewhere")
    client = CommittedCheck(app_pool, handle.id)
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    try:
        body = {"actions": [action], "max_items": 5, "lease_s": 60, "worker": "w-1"}
        leased = api.client.post("/api/v1/work/lease", json=body, headers=api.headers("stale-lease", ["Module.Worker"]))
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]
    assert leased.status_code == 200, leased.text
    assert leased.json()["items"] == []

    delivered = {instance: (name, verdict) for instance, name, verdict in client.delivered}
    assert set(delivered) == {str(cancelled.execution_id), str(ended.execution_id)}
    for key, error in ((cancelled, work_queue.CANCELLED_QUEUED), (ended, work_queue.ENDED_QUEUED)):
        name, verdict = delivered[str(key.execution_id)]
        assert name == key.event_name
        assert verdict == {"ok": False, "error": error, "retryable": False, "state": "abandoned"}
        assert client.seen[str(key.execution_id)] == "abandoned"


def test_a_big_output_sent_again_in_another_member_order_is_the_same_result(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    # Stored as a blob, the output was compared by the digest of its bytes: the same value with its members in
    # another order (or 1 for 1.0) was refused 409, and the verdict was never raised again.
    attempt = remote_attempt(app_pool, tenant)
    durable.failures = [TRANSIENT]
    output = {"count": 1.0, **big_output("worker")}
    assert report(api, attempt, {"output": output}).status_code == 503
    reordered = dict(reversed(list({**output, "count": 1}.items())))
    again = report(api, attempt, {"output": reordered})
    assert again.status_code == 200, again.text
    assert [name for _, name, _ in durable.delivered] == ["run:build:1"]
    changed = report(api, attempt, {"output": {**reordered, "marker": "attacker"}})
    assert changed.status_code == 409


def test_a_suspended_tenants_worker_completes_what_it_holds_and_leases_nothing_more(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: FlakyDurable
) -> None:
    # ADR 0027, amendment 2026-12-06: a task token handed out before the suspension completes its attempt.
    handle = api.provision("suspended-worker")
    attempt = remote_attempt(app_pool, handle.id)
    with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_platform")
        conn.execute("UPDATE app.tenants SET status = 'suspended' WHERE id = %s", (handle.id,))
    refused = api.client.post(
        "/api/v1/work/lease",
        json={"actions": ["build-container"], "max_items": 1, "lease_s": 60, "worker": "w"},
        headers=api.headers("suspended-worker", ["Module.Worker"]),
    )
    assert refused.status_code == 403 and refused.json()["reason"] == "tenant_suspended"
    done = report(api, attempt, {"output": {"image": "x"}})
    assert done.status_code == 200, done.text
    assert [name for _, name, _ in durable.delivered] == ["run:build:1"]
