# intent_ref: platform.events
"""Tenants the relay defers (their partition timed out) take their turns among themselves least recently failed
first: a tenant deferred once whose partition answers again is relayed, even while older deferred tenants' partitions
keep timing out and spend every run's budget."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.events import relay
from shared.events.relay import relay_pending
from tests.integration.relay_harness import Clock, Partitions, backoff_passed, forget_deferrals
from tests.integration.test_outbox_relay import _enqueue, _unpublished

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


@pytest.fixture(autouse=True)
def drained(app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]) -> Iterator[None]:
    forget_deferrals(control_pool)
    relay_pending(Partitions, max_rounds=100)
    yield
    forget_deferrals(control_pool)
    relay_pending(Partitions, max_rounds=100)


def test_a_deferred_tenant_whose_partition_answers_again_is_not_kept_behind_older_deferred_ones(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    still_down, recovered = new_tenant(), new_tenant()
    _enqueue(app_pool, still_down, 1)  # the older events: first in the order of tenants waiting
    _enqueue(app_pool, recovered, 1)
    clock = Clock()
    monkeypatch.setattr(relay, "monotonic", clock)
    # The first run: both partitions time out, and both tenants are deferred.
    monkeypatch.setattr(relay, "RELAY_RUN_BUDGET_S", 2 * relay.RELAY_PUBLISH_TIMEOUT_S)
    relay_pending(lambda: Partitions({still_down, recovered}, clock=clock))
    # Later runs, each once the deferred tenants' backoffs have passed (within them, neither is tried): one
    # partition's timeout spends a run's budget, as three did of the 300 s; one partition answers.
    monkeypatch.setattr(relay, "RELAY_RUN_BUDGET_S", relay.RELAY_PUBLISH_TIMEOUT_S)
    publisher = Partitions({still_down}, clock=clock)
    for _ in range(4):
        backoff_passed(control_pool, still_down, recovered)
        relay_pending(lambda: publisher)
    assert _unpublished(app_pool, recovered) == 0, (
        f"the recovered tenant was never tried again (tried: {publisher.tried}): the older deferred tenant, still"
        " timing out, came first among the deferred in every run"
    )
    assert _unpublished(app_pool, still_down) == 1
    assert str(recovered) in publisher.tried[:2]
    backoff_passed(control_pool, still_down)
    assert relay_pending(Partitions).published == 1
