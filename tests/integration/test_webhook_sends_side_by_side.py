# intent_ref: platform.events
"""A tenant's sends to its subscriptions overlap (ADR 0030): one whose receiver keeps its send waiting holds up none
of its siblings, while each subscription still gets its deliveries one at a time, in order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shared.db.session import tenant_transaction
from shared.events import webhooks
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhook_scheduling import Held, _until
from tests.integration.test_webhooks import Receiver, emit, local, tenant  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def slow() -> Iterator[Held]:
    """A receiver that holds every request until let go; let go at the end whatever the test's outcome."""
    receiver = Held()
    yield receiver
    receiver.let()
    receiver.server.shutdown()
    receiver.server.server_close()


def test_a_subscription_whose_receiver_keeps_its_send_waiting_holds_up_none_of_its_siblings(
    api: ApiHarness, local: None, slow: Held
) -> None:
    fast = Receiver()
    handle, headers = tenant(api, "leftovers-overlap")
    made = [
        api.client.post("/api/v1/webhooks", json={"url": fast.url, "event_types": ["*"]}, headers=headers)
        for _ in range(2)
    ]
    assert all(m.status_code == 201 for m in made), [m.text for m in made]
    # The lower id is claimed first (neither was sent to before): it gets the receiver that keeps its sends waiting.
    first = min(m.json()["id"] for m in made)
    changed = api.client.patch(f"/api/v1/webhooks/{first}", json={"url": slow.url}, headers=headers)
    assert changed.status_code == 200, changed.text
    events = emit(handle.id, "test.first", "test.second")
    outcome: list[webhooks.DeliveryResult] = []
    sending = threading.Thread(
        target=lambda: outcome.append(webhooks.deliver_tenant(handle.id, send_timeout_s=60, budget_s=60)),
        daemon=True,
    )
    sending.start()

    # Both of the other subscription's deliveries go out, in order, while the slow receiver still holds the first of
    # its own; before, the tenant's sends went one after another, and nothing went past the held one.
    assert _until(lambda: len(fast.received) == 2), "the sibling waited for the slow receiver"
    assert [e["id"] for e in fast.events()] == events
    assert slow.arrived == 1 and slow.answered == 0  # its second waits behind its first: order per subscription

    slow.let()
    sending.join(60)
    assert outcome and outcome[0].delivered == 4 and outcome[0].failed_attempts == 0 and outcome[0].left == 0
    with tenant_transaction(handle.id) as conn:
        rows = conn.execute(
            "SELECT subscription_id::text AS s, message_id, state, attempts FROM app.webhook_deliveries"
            " ORDER BY subscription_id, id"
        ).fetchall()
    assert [(r["state"], r["attempts"]) for r in rows] == [("delivered", 1)] * 4
    assert [r["message_id"] for r in rows if r["s"] == first] == events


def test_the_sends_a_turn_did_not_start_go_back_due(api: ApiHarness, local: None, slow: Held) -> None:
    handle, headers = tenant(api, "leftovers-give-back")
    for _ in range(3):
        made = api.client.post("/api/v1/webhooks", json={"url": slow.url, "event_types": ["*"]}, headers=headers)
        assert made.status_code == 201, made.text
    emit(handle.id, "test.held")
    turn = webhooks.Turn(0.0)
    turn.ends = float("inf")
    outcome: list[Any] = []
    sending = threading.Thread(
        target=lambda: outcome.append(
            webhooks.deliver_tenant(
                handle.id, send_timeout_s=60, turn=turn, slow_send_s=0.05, beside_after_s=0.05, subscriptions_at_once=2
            )
        ),
        daemon=True,
    )
    sending.start()
    assert _until(lambda: slow.arrived == 1)
    turn.slow = True  # as the run marks a turn whose send waits: the next head starts beside it
    # Two at once, no more; the turn then ends: the third head, never started, is due again with no attempt counted.
    assert _until(lambda: slow.arrived == 2)
    turn.ends = 0.0
    slow.let()
    sending.join(60)
    assert outcome and outcome[0].delivered == 2 and outcome[0].left == 1, outcome
    with tenant_transaction(handle.id) as conn:
        rows = conn.execute(
            "SELECT state, attempts, next_attempt_at <= clock_timestamp() AS due FROM app.webhook_deliveries"
            " ORDER BY state"
        ).fetchall()
    assert [(r["state"], r["attempts"], r["due"]) for r in rows] == [
        ("delivered", 1, False),
        ("delivered", 1, False),
        ("pending", 0, True),
    ]
