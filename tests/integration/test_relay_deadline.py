# intent_ref: platform.events
"""The outbox relay's publish ends by its deadline: untimed, a hub link whose open was stuck (a hub that accepts the
connection and never answers) held the relay's run, its tenant transaction and the hub's turn for the SDK's retries
(minutes). Given up, its events go again on the next run, which sends them on a fresh link; a run stops at the first
publish the hub did not answer by its deadline instead of waiting it out once per tenant (a send timeout of one
tenant's partition does not stop it: tests/integration/test_relay_partition_timeout.py)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from azure.eventhub import EventHubProducerClient
from psycopg_pool import ConnectionPool

from shared.events import relay
from shared.events.publisher import PublishTimeoutError
from shared.events.relay import relay_pending
from tests.integration.relay_harness import Partitions
from tests.integration.test_module_worker_claims import BOUND_S
from tests.integration.test_outbox_relay import _enqueue, _unpublished
from tests.integration.test_publish_resend_stuck_link import _Answering, _Publisher
from tests.integration.test_sdk_module_deadlines import _Run, _Silent, silent  # noqa: F401  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

DEADLINE_S = 2.0
"""The relay's deadline here; the SDK's own open against a silent hub lasts minutes."""


@pytest.fixture(autouse=True)
def drained(app_pool: ConnectionPool[Any]) -> None:
    """Start each test with nothing waiting (other modules of the session leave events behind)."""
    relay_pending(Partitions, max_rounds=100)


def _eventually(condition: Callable[[], bool]) -> bool:
    ends = time.monotonic() + BOUND_S * 3
    while not condition():
        if time.monotonic() >= ends:
            return False
        time.sleep(0.05)
    return True


def test_a_relay_publish_against_a_silent_hub_ends_by_its_deadline_and_the_next_run_sends_on_a_fresh_link(
    app_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    silent: _Silent,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = new_tenant()
    ids = _enqueue(app_pool, tenant, 3)
    publisher = _Publisher(silent.port, silent_links=1)  # its first producer is a real one for the silent hub
    monkeypatch.setattr(relay, "get_publisher", lambda: publisher)
    monkeypatch.setattr(relay, "RELAY_PUBLISH_TIMEOUT_S", DEADLINE_S)
    try:
        first = _Run(relay_pending)  # as the timer calls it: the process's publisher, the relay's deadline
        assert first.ended(), (
            f"the relay's run had not ended after {BOUND_S:g} s: its publish waited on the hub's stuck link open"
        )
        assert first.error is None, f"the relay's run failed: {first.error!r}"
        assert (first.output.published, first.output.failed_tenants) == (0, 1)
        assert _unpublished(app_pool, tenant) == 3  # rolled back: they go again

        second = relay_pending()
        assert (second.published, second.failed_tenants) == (3, 0)
        stuck, fresh = publisher.built
        assert isinstance(stuck, EventHubProducerClient) and isinstance(fresh, _Answering)
        assert [event.properties["event_id"] for event in fresh.sent] == ids
        assert _unpublished(app_pool, tenant) == 0
    finally:
        # The stuck open ends once the hub goes away for good (the SDK's retries are refused).
        silent._listener.shutdown(socket.SHUT_RDWR)
        silent.close()
    assert _eventually(lambda: publisher._set_aside == {}), "the producer set aside was never closed"


def test_a_run_stops_at_the_first_publish_the_hub_did_not_answer_by_its_deadline(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenants = [new_tenant(), new_tenant()]
    for tenant in tenants:
        _enqueue(app_pool, tenant, 1)
    silenced = Partitions(error=PublishTimeoutError, all_down=True)  # a hub that does not answer
    result = relay_pending(lambda: silenced)
    # Every tenant's events go to the same hub: the next tenant would wait out the same deadline for nothing.
    assert len(silenced.tried) == 1, f"the run went on to publish for {len(silenced.tried)} tenants"
    assert (result.published, result.failed_tenants) == (0, 1)
    assert [_unpublished(app_pool, tenant) for tenant in tenants] == [1, 1]
    assert relay_pending(Partitions).published == 2  # the next run sends them all
