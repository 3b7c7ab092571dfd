# intent_ref: platform.events
"""A send timeout of one tenant's partition (the tenant id is the partition key) is that tenant's failure, not the
hub's: the run goes on with the other tenants, and later runs relay that tenant after the others, so its timeouts do
not spend their budget first. A run starts no publish once its budget is spent (a hub whose partitions all time out)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.eventhub.exceptions import OperationTimeoutError
from psycopg_pool import ConnectionPool

from shared.events import relay
from shared.events.relay import relay_pending
from tests.integration.relay_harness import (
    Clock,
    FailingKey,
    Partitions,
    ProducerPublisher,
    backoff_passed,
    forget_deferrals,
)
from tests.integration.test_outbox_relay import _enqueue, _unpublished

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


@pytest.fixture(autouse=True)
def drained(app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]) -> Iterator[None]:
    forget_deferrals(control_pool)  # a tenant left backing off keeps its events from the drain
    relay_pending(Partitions, max_rounds=100)
    yield
    forget_deferrals(control_pool)
    relay_pending(Partitions, max_rounds=100)


def test_one_tenants_partition_timing_out_does_not_keep_every_other_tenants_events_back(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck, other = new_tenant(), new_tenant()
    _enqueue(app_pool, stuck, 1)  # the oldest waiting event: its tenant comes first in every run
    _enqueue(app_pool, other, 2)
    producer = FailingKey(str(stuck), OperationTimeoutError("the partition did not answer"))
    publisher = ProducerPublisher(producer)
    monkeypatch.setattr(relay, "get_publisher", lambda: publisher)
    for _ in range(3):  # three timer runs, as the host calls it (the process's publisher, the relay's deadline)
        relay_pending()
    assert _unpublished(app_pool, stuck) == 1
    # Before the relay's deadline (untimed publish), the SDK's timeout was an ordinary failure and the run went on.
    assert _unpublished(app_pool, other) == 0, (
        f"the other tenant's events were never relayed (sent: {producer.sent}): every run stopped at the tenant whose"
        " partition timed out"
    )


def test_a_run_whose_publishes_time_out_on_their_partitions_starts_none_past_its_budget(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenants = [new_tenant() for _ in range(3)]
    for tenant in tenants:
        _enqueue(app_pool, tenant, 1)
    clock = Clock()
    monkeypatch.setattr(relay, "monotonic", clock)
    monkeypatch.setattr(relay, "RELAY_RUN_BUDGET_S", relay.RELAY_PUBLISH_TIMEOUT_S)
    timing_out = Partitions(all_down=True, clock=clock)  # the hub's link opens, and no partition answers
    result = relay_pending(lambda: timing_out)
    assert timing_out.tried == [str(tenants[0])], "the run went on past its budget"
    assert (result.published, result.failed_tenants) == (0, 1)
    assert [_unpublished(app_pool, tenant) for tenant in tenants] == [1, 1, 1]
    backoff_passed(control_pool, tenants[0])  # the tenant whose partition timed out backs off (test_relay_backoff.py)
    assert relay_pending(Partitions).published == 3  # the next run sends them all


def test_a_tenant_whose_partition_timed_out_is_relayed_after_the_others_in_the_next_runs(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stuck, other = new_tenant(), new_tenant()
    _enqueue(app_pool, stuck, 1)  # the oldest waiting event: its tenant comes first in the order
    _enqueue(app_pool, other, 1)
    clock = Clock()
    monkeypatch.setattr(relay, "monotonic", clock)
    monkeypatch.setattr(relay, "RELAY_RUN_BUDGET_S", relay.RELAY_PUBLISH_TIMEOUT_S)  # one timeout spends a run
    publisher = Partitions({stuck}, clock=clock)
    for _ in range(2):
        backoff_passed(control_pool, stuck)  # its turn in a run once its backoff has passed (test_relay_backoff.py)
        relay_pending(lambda: publisher)
    assert publisher.tried == [str(stuck), str(other), str(stuck)]
    assert (_unpublished(app_pool, stuck), _unpublished(app_pool, other)) == (1, 0)
    backoff_passed(control_pool, stuck)
    assert relay_pending(Partitions).published == 1  # once its partition answers, it goes as the others do
