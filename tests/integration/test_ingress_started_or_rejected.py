# intent_ref: platform.ingress
"""One event is never both started and recorded rejected, however its deliveries interleave: a delivery refused while
another starts the request answers that execution, a delivery that finds a record being written waits for it, and a
batch's retry refused after its first delivery started the request (a grant revoked, the tenant suspended) answers the
accepted execution, left to the sweeper, instead of recording a rejection that every later delivery would answer."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from shared.engine.sweeper import claim_stalled_starts
from shared.ingress import process
from shared.ingress.process import Outcome, process_event
from shared.ingress.rejections import NewRejection, record_rejection
from shared.ingress.request import IngressEvent
from shared.tenants.repository import tenant_directory
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_ingress_launch import _validator
from tests.integration.test_ingress_rejections import NoOrchestrations, _intent
from tests.integration.test_ingress_review_fixes import _event, _sequence, _state
from tests.integration.test_start_service import TaskHub

pytestmark = pytest.mark.integration

_WAIT_S = 10.0
"""How long a test waits for the other delivery to reach the point it is waited at before it fails."""


def _busy(api: ApiHarness, name: str) -> tuple[uuid.UUID, str, int]:
    """A tenant of one concurrent execution, holding it with a started one; its id, intent and a free sequence."""
    tenant = api.provision(name, quotas={"max_concurrent_executions": 1})
    intent_id = _intent(api, name)
    base = _sequence()
    busy = _event(api, name, {"intent_id": intent_id, "input": {}, "idempotency_key": "busy"}, base)
    assert asyncio.run(process_event(busy, TaskHub(), _validator(api))).created
    return tenant.id, intent_id, base + 1


def _free_quota(api: ApiHarness, tenant_id: uuid.UUID) -> None:
    """The busy execution ends: the quota has room again."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE app.executions SET status = 'succeeded' WHERE tenant_id = %s AND idempotency_key = 'busy'",
            (tenant_id,),
        )


def _delivered_beside(event: IngressEvent, hub: Any, api: ApiHarness) -> Callable[[], Outcome]:
    """Another delivery of `event`, processed on a thread of its own (another consumer of the partition) from now on;
    what it gives waits for its outcome."""
    outcomes: list[Outcome] = []
    failures: list[BaseException] = []

    def deliver() -> None:
        try:
            outcomes.append(asyncio.run(process_event(event, hub, _validator(api))))
        except BaseException as exc:  # reported by the test, not lost on the thread
            failures.append(exc)

    thread = threading.Thread(target=deliver, daemon=True)
    thread.start()

    def outcome() -> Outcome:
        thread.join(_WAIT_S)
        assert not thread.is_alive(), "the other delivery did not finish"
        if failures:
            raise failures[0]
        return outcomes[0]

    return outcome


def _waits_for_a_lock(api: ApiHarness) -> None:
    """Until a transaction waits for a tenant's lock row (the other delivery's start, held up by this record)."""
    deadline = time.monotonic() + _WAIT_S
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                ("%tenant_locks%",),
            ).fetchone()
            if waiting is not None and waiting[0] > 0:
                return
            time.sleep(0.02)
    raise AssertionError("the other delivery never waited for the tenant's lock")


def _both(api: ApiHarness, tenant_id: uuid.UUID, key: str) -> tuple[list[uuid.UUID], list[str]]:
    """The executions started and the rejections recorded under `key`."""
    executions, rejections = _state(api, tenant_id)
    return [id_ for k, id_ in executions if k == key], [reason for k, reason, _ in rejections if k == key]


def test_a_delivery_refused_while_another_starts_the_event_answers_that_execution(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Delivery 1 is refused its quota; the quota frees and delivery 2, finding no record yet, starts the request;
    # delivery 1 then recorded quota_exceeded: started and rejected, every later delivery answered "rejected" while
    # it ran, and a producer resending it with a new key ran it twice.
    tenant_id, intent_id, sequence = _busy(api, "race-start")
    event = _event(api, "race-start", {"intent_id": intent_id, "input": {}, "idempotency_key": "n"}, sequence)
    real_record, other = process._record, list[Outcome]()

    def record_after_the_other_started(*args: Any) -> Outcome | None:
        if not other:
            _free_quota(api, tenant_id)
            other.append(_delivered_beside(event, TaskHub(), api)())
        return real_record(*args)

    monkeypatch.setattr(process, "_record", record_after_the_other_started)
    answer = asyncio.run(process_event(event, NoOrchestrations(), _validator(api)))
    started, recorded = _both(api, tenant_id, "n")
    assert (len(started), recorded) == (1, [])
    assert other == [Outcome(event.event_id, started[0], created=True)]
    assert answer == Outcome(event.event_id, started[0])


def test_a_delivery_that_starts_while_the_event_is_being_recorded_answers_the_record(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Delivery 1, refused its quota, has looked for an execution of the event and is about to record its rejection;
    # delivery 2 looked for the record before delivery 1 wrote it, then waited for the tenant's start lock and
    # started the request once delivery 1 committed. Now it looks under that lock, and finds the record.
    tenant_id, intent_id, sequence = _busy(api, "race-record")
    event = _event(api, "race-record", {"intent_id": intent_id, "input": {}, "idempotency_key": "n"}, sequence)
    other: list[Callable[[], Outcome]] = []

    def insert_while_the_other_waits(conn: Any, rejection: NewRejection) -> bool:
        if other:
            return record_rejection(conn, rejection)
        _free_quota(api, tenant_id)
        # Answered once this transaction has committed, after the test's wrapper returns.
        other.append(_delivered_beside(event, TaskHub(), api))
        _waits_for_a_lock(api)
        return record_rejection(conn, rejection)

    monkeypatch.setattr(process, "record_rejection", insert_while_the_other_waits)
    answer = asyncio.run(process_event(event, NoOrchestrations(), _validator(api)))
    assert answer == Outcome(event.event_id, reason="quota_exceeded")
    assert other[0]() == Outcome(event.event_id, reason="quota_exceeded")
    assert _both(api, tenant_id, "n") == ([], ["quota_exceeded"])


def _forbid(api: ApiHarness, name: str, tenant_id: uuid.UUID) -> None:
    """A tenant policy forbids every `intent.execute` from now on."""
    policy = 'forbid (principal, action == QP::Action::"intent.execute", resource);'
    created = api.client.post(
        "/api/v1/policies", headers=api.headers(name, ["Tenant.Admin"]), json={"name": "stop", "policy": policy}
    )
    assert created.status_code == 201, created.text


def _suspend(api: ApiHarness, name: str, tenant_id: uuid.UUID) -> None:
    """The tenant is suspended (the control plane's write, and its clearing of the directory's cache)."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("UPDATE app.tenants SET status = 'suspended' WHERE id = %s", (tenant_id,))
    tenant_directory.forget()


def _reactivate(api: ApiHarness, tenant_id: uuid.UUID) -> None:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("UPDATE app.tenants SET status = 'active' WHERE id = %s", (tenant_id,))
    tenant_directory.forget()


@pytest.mark.parametrize("refuse", [_forbid, _suspend], ids=["grant-removed", "tenant-suspended"])
def test_a_started_event_retried_after_it_may_no_longer_start_answers_its_execution(
    api: ApiHarness, refuse: Callable[[ApiHarness, str, uuid.UUID], None]
) -> None:
    # Its first delivery created the execution and its launch failed (pending, claim released); before the batch's
    # retry the sender lost the right to start it. The retry, refused before the start looks for the key, recorded
    # `forbidden` while the sweeper went on to start the execution: started and rejected.
    name = f"retried-{refuse.__name__.strip('_')}"
    tenant = api.provision(name)
    intent_id = _intent(api, name)
    event = _event(api, name, {"intent_id": intent_id, "input": {}, "idempotency_key": "k"}, _sequence())
    hub = TaskHub(fail_call=1)
    with pytest.raises(ConnectionError):
        asyncio.run(process_event(event, hub, _validator(api)))
    [(_, execution_id)] = _state(api, tenant.id)[0]
    refuse(api, name, tenant.id)

    for _ in range(2):  # the retry, and any later delivery: the execution, never a rejection
        assert asyncio.run(process_event(event, hub, _validator(api))) == Outcome(event.event_id, execution_id)
    executions, rejections = _state(api, tenant.id)
    assert ([key for key, _ in executions], rejections) == (["k"], [])
    # Accepted before the refusal, it is not launched by a delivery that was refused: the sweeper starts it, on its
    # next run once the tenant is active, as it does every accepted start whose launch failed.
    assert hub.calls == [str(execution_id)]
    if refuse is _suspend:
        assert claim_stalled_starts(tenant.id, start_grace_s=0) == []
        _reactivate(api, tenant.id)
    assert claim_stalled_starts(tenant.id, start_grace_s=0) == [execution_id]


def test_another_requests_execution_under_the_key_does_not_answer_a_refused_event(api: ApiHarness) -> None:
    # The key names another request of the sender's (another input): the event is not that execution's, and its
    # refusal is recorded as before.
    name = "key-reused"
    tenant = api.provision(name)
    intent_id = _intent(api, name)
    base = _sequence()
    first = _event(api, name, {"intent_id": intent_id, "input": {}, "idempotency_key": "k"}, base)
    assert asyncio.run(process_event(first, TaskHub(), _validator(api))).created
    _forbid(api, name, tenant.id)
    other = _event(api, name, {"intent_id": intent_id, "input": {"x": 1}, "idempotency_key": "k"}, base + 1)
    assert asyncio.run(process_event(other, NoOrchestrations(), _validator(api))).reason == "forbidden"
    assert [(key, reason) for key, reason, _ in _state(api, tenant.id)[1]] == [("k", "forbidden")]
