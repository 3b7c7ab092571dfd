# intent_ref: platform.events
"""A change of a webhook subscription racing the delivery that disables it (ADR 0030): the change is decided from
the subscription as it is, so it neither re-enables it behind the sender's back nor skips its failed delivery."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from shared.db.session import tenant_transaction
from shared.events import webhook_store, webhooks
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import Receiver, emit, local, tenant  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration


def _blocked_or_done(admin_url: str, pid: int, thread: threading.Thread, timeout_s: float = 10.0) -> bool:
    """Wait until some backend waits for a lock that backend `pid` holds (True), or `thread` has ended (False)."""
    ends = time.monotonic() + timeout_s
    with psycopg.connect(admin_url, dbname="quantum", autocommit=True) as conn:
        while time.monotonic() < ends and thread.is_alive():
            query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
            if conn.execute(query, (pid,)).fetchone() != (0,):
                return True
            time.sleep(0.01)
    assert not thread.is_alive(), "the delivery neither ended nor waited for the change"
    return False


def test_a_change_made_while_the_last_attempt_disables_the_subscription_leaves_it_disabled(
    api: ApiHarness, local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    receiver.failures = 10**6  # down
    handle, headers = tenant(api, "hooks-patch-race")
    body = {"url": receiver.url, "event_types": ["execution.started", "execution.completed"]}
    subscription = api.client.post("/api/v1/webhooks", json=body, headers=headers).json()
    first = emit(handle.id, "execution.started")[0]
    with tenant_transaction(handle.id) as conn:  # seven attempts failed already: the next one is the last
        conn.execute("UPDATE app.webhook_deliveries SET attempts = %s", (webhooks.MAX_ATTEMPTS - 1,))

    # The delivery's last attempt runs while the PATCH has read the subscription and not yet written it.
    runs: list[webhooks.DeliveryResult] = []
    waited: list[bool] = []
    real_update = webhook_store.update

    def update(conn: Any, current: webhook_store.Subscription, **changes: Any) -> webhook_store.Subscription:
        if not waited:
            sender = threading.Thread(target=lambda: runs.append(webhooks.deliver_tenant(handle.id, backoff_base_s=0)))
            sender.start()
            # The sender fails the attempt, then waits for the subscription this change holds (or, were it not
            # held, disables it and commits before the change writes).
            waited.append(_blocked_or_done(api.admin_url, conn.info.backend_pid, sender))
        return real_update(conn, current, **changes)

    monkeypatch.setattr(webhook_store, "update", update)
    patched = api.client.patch(
        f"/api/v1/webhooks/{subscription['id']}", json={"description": "renamed"}, headers=headers
    )
    monkeypatch.setattr(webhook_store, "update", real_update)
    assert patched.status_code == 200, patched.text
    deadline = time.monotonic() + 10
    while not runs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runs and runs[0].failed_attempts == 1 and runs[0].disabled == 1

    # The description changed and the subscription stays disabled: the change did not re-enable it in passing.
    current = api.client.get(f"/api/v1/webhooks/{subscription['id']}", headers=headers).json()
    assert (current["description"], current["enabled"]) == ("renamed", False)
    assert f"failed {webhooks.MAX_ATTEMPTS} times" in current["disabled_reason"]

    # Re-enabled on purpose, it resends the failed delivery first, then what came after it.
    receiver.failures = 0
    assert webhooks.deliver_tenant(handle.id).delivered == 0  # disabled: nothing goes
    enabled = api.client.patch(f"/api/v1/webhooks/{subscription['id']}", json={"enabled": True}, headers=headers)
    assert enabled.status_code == 200, enabled.text
    later = emit(handle.id, "execution.completed")[0]
    assert webhooks.deliver_tenant(handle.id).delivered == 2
    assert [e["id"] for e in receiver.events()] == [first, first, later]  # the last failed attempt, then these
