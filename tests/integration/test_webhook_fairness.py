# intent_ref: platform.events
"""A tenant whose receivers never answer delays no other tenant's deliveries (ADR 0030): a run leaves the sends still
waiting past its budget to end and record on their own, so the next run is not held up by them; the tenant has no
more sends under way at once across runs than its share; and a run held open by them serves the other tenants again
as their events come, not once."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any
from uuid import UUID

import pytest

from shared.db.session import tenant_transaction
from shared.events import webhooks
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhook_scheduling import (  # noqa: F401  # `held`, `only`: the fixtures
    Held,
    Run,
    _subscribe,
    _until,
    held,
    only,
)
from tests.integration.test_webhooks import Receiver, emit, local  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration


def _deliveries(tenant_id: UUID) -> list[tuple[str, int, bool]]:
    """The tenant's deliveries, oldest first: state, attempts, and whether one pending is due now (not held)."""
    with tenant_transaction(tenant_id) as conn:
        rows = conn.execute(
            "SELECT state, attempts, state = 'pending' AND next_attempt_at <= clock_timestamp() AS due"
            " FROM app.webhook_deliveries ORDER BY subscription_id, id"
        ).fetchall()
    return [(r["state"], r["attempts"], r["due"]) for r in rows]


def test_a_run_leaves_a_dead_receivers_sends_under_way_and_the_next_run_serves_the_others(
    api: ApiHarness, local: None, held: list[Held], only: Callable[[Collection[UUID]], None]
) -> None:
    dead, fast = Held(), Receiver()
    held.append(dead)
    # Two subscriptions of one tenant to a receiver that answers nothing until the test lets it; one of another
    # tenant to a receiver that answers at once.
    dead_tenant = _subscribe(api, "fair-dead", dead.url, subscriptions=2)
    other = _subscribe(api, "fair-other", fast.url)
    emit(dead_tenant.id, "test.dead")
    first = emit(other.id, "test.first")
    only([dead_tenant.id, other.id])
    options: dict[str, Any] = {"send_timeout_s": 60, "subscriptions_at_once": 1}

    # The first run, as the timer starts it: its budget passes while the dead receiver still holds the send.
    run = Run(budget_s=1.0, **options)
    assert _until(lambda: run.result is not None), "the run waited for a send its budget had long passed"
    result = run.finish()
    # It returned with that send still under way, and the other tenant's delivery sent.
    assert dead.arrived == 1 and dead.answered == 0
    assert [e["id"] for e in fast.events()] == first
    assert (result.delivered, result.failed_attempts, result.under_way, result.left) == (1, 0, 1, 1), result
    assert webhooks.sends_under_way(dead_tenant.id) == 1

    # The next run, while that send is still held: the other tenant's next event goes out; the dead tenant, with as
    # many sends under way as it may have, starts none (its other head is not even claimed), and the held one is
    # not sent again.
    second = emit(other.id, "test.second")
    result = webhooks.deliver_due(max_tenants=10_000, budget_s=1.0, **options)
    assert [e["id"] for e in fast.events()] == first + second
    assert (result.delivered, result.under_way, result.left) == (1, 0, 0), result
    assert dead.arrived == 1 and dead.answered == 0
    assert sorted(_deliveries(dead_tenant.id)) == [("pending", 0, False), ("pending", 0, True)]

    # Let go, the send left under way records its outcome itself, once; then the tenant's other head goes out.
    dead.let()
    assert _until(lambda: ("delivered", 1, False) in _deliveries(dead_tenant.id))
    assert _until(lambda: webhooks.sends_under_way(dead_tenant.id) == 0)
    assert sorted(_deliveries(dead_tenant.id)) == [("delivered", 1, False), ("pending", 0, True)]
    assert webhooks.deliver_tenant(dead_tenant.id).delivered == 1
    assert _deliveries(dead_tenant.id) == [("delivered", 1, False)] * 2
    assert dead.arrived == 2 and dead.answered == 2  # each delivery sent once


def test_a_run_held_open_by_a_dead_receiver_serves_the_other_tenants_events_as_they_come(
    api: ApiHarness, local: None, held: list[Held], only: Callable[[Collection[UUID]], None]
) -> None:
    dead, fast = Held(), Receiver()
    held.append(dead)
    dead_tenant = _subscribe(api, "fair-open-dead", dead.url)
    other = _subscribe(api, "fair-open-other", fast.url)
    emit(dead_tenant.id, "test.dead")
    first = emit(other.id, "test.first")
    only([dead_tenant.id, other.id])

    run = Run(send_timeout_s=60, budget_s=60)
    assert _until(lambda: dead.arrived == 1 and len(fast.received) == 1)
    # Served already in this run, the other tenant has an event due again while the dead receiver holds the run
    # open: it goes out in this run. Before, a run served each tenant once, and it waited for the run's end.
    second = emit(other.id, "test.second")
    assert _until(lambda: len(fast.received) == 2), "the other tenant's next event waited for the run's end"
    assert [e["id"] for e in fast.events()] == first + second and dead.answered == 0
    dead.let()
    result = run.finish()
    assert (result.delivered, result.under_way, result.tenants_left) == (3, 0, 0), result
