# intent_ref: platform.events
"""A send that failed on the hub's link (lost under it, the SDK's retries given up) is not the tenant's partition's
trouble: the publisher tells it from a send that timed out, and the relay keeps the tenant's place in the next run's
order instead of deferring it behind the other tenants."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from azure.eventhub.exceptions import ConnectError, ConnectionLostError, EventHubError, OperationTimeoutError
from psycopg_pool import ConnectionPool

from shared.events import relay
from shared.events.publisher import OutboundEvent, PartitionTimeoutError, PublishLinkError
from shared.events.relay import relay_pending
from tests.integration.relay_harness import Batch, FailingKey, Partitions, ProducerPublisher
from tests.integration.test_outbox_relay import _enqueue, _unpublished

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


@pytest.fixture(autouse=True)
def drained(app_pool: ConnectionPool[Any]) -> None:
    relay_pending(Partitions, max_rounds=100)


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (ConnectionLostError("link detached"), PublishLinkError),
        (ConnectError("connection dropped"), PublishLinkError),
        (OperationTimeoutError("the partition did not answer"), PartitionTimeoutError),
    ],
    ids=["link-lost", "connection-dropped", "send-timed-out"],
)
def test_a_send_that_failed_on_the_link_is_told_from_one_that_timed_out(
    error: EventHubError, raised: type[Exception]
) -> None:
    publisher = ProducerPublisher(FailingKey("k", error, once=True))
    with pytest.raises(Exception) as failure:
        publisher.publish("platform-events", [OutboundEvent({"n": 1}, "k", {})], timeout=5.0)
    assert type(failure.value) is raised
    assert failure.value.__cause__ is error


def test_a_tenant_whose_send_failed_on_the_link_keeps_its_place_in_the_next_run(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    lost, other = new_tenant(), new_tenant()
    _enqueue(app_pool, lost, 1)  # the oldest waiting events: their tenant comes first in the order
    _enqueue(app_pool, other, 1)
    producer = FailingKey(str(lost), ConnectionLostError("link detached"), once=True)
    publisher = ProducerPublisher(producer)
    monkeypatch.setattr(relay, "get_publisher", lambda: publisher)
    first = relay_pending()
    assert (first.published, first.failed_tenants) == (1, 1)
    assert producer.sent == [str(other)]
    later = new_tenant()
    _enqueue(app_pool, later, 1)  # waiting for less long than the tenant whose send failed
    relay_pending()
    assert producer.sent[1:] == [str(lost), str(later)], (
        "the tenant whose send failed on the hub's link was relayed after a tenant waiting for less long: it was"
        " deferred as if its partition did not answer"
    )
    assert [_unpublished(app_pool, tenant) for tenant in (lost, other, later)] == [0, 0, 0]


class _OpenFails(FailingKey):
    """A producer whose link's first open, made by its first `create_batch`, fails as the SDK raises it."""

    def __init__(self, error: EventHubError) -> None:
        super().__init__(None, error, once=True)
        self.open_error: EventHubError | None = error

    def create_batch(self, *, partition_key: str | None = None) -> Batch:
        if self.open_error is not None:
            error, self.open_error = self.open_error, None
            raise error
        return super().create_batch(partition_key=partition_key)


@pytest.mark.parametrize(
    "error", [ConnectError("connection refused"), ConnectionLostError("link detached while opening")]
)
def test_a_link_that_failed_to_open_is_the_hubs_failure_not_the_partitions(error: EventHubError) -> None:
    publisher = ProducerPublisher(_OpenFails(error))
    with pytest.raises(Exception) as failure:
        publisher.publish("platform-events", [OutboundEvent({"n": 1}, "k", {})], timeout=5.0)
    assert type(failure.value) is PublishLinkError  # the relay keeps the tenant's place for it (above)
    assert failure.value.__cause__ is error
    publisher.publish("platform-events", [OutboundEvent({"n": 2}, "k", {})], timeout=5.0)  # opened on the next one
