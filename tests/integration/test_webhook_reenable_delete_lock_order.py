# intent_ref: platform.events
"""A change that re-enables a subscription and a delete of it, sent at once, take the subscription's deliveries and
the subscription in one order (deliveries first, as the sender does): the delete waits for the change or the change
for the delete, and neither is a deadlock's victim (503)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from shared.db.session import tenant_transaction
from shared.events import webhook_store
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import Receiver, emit, local, tenant  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration
HOOKS = "/api/v1/webhooks"
_WAITING = "SELECT count(*) FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0"
_BLOCKED_BY = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"


def _wait_blocked_by(admin: psycopg.Connection[Any], pid: int, waiters: int) -> None:
    """Until `waiters` sessions wait for `pid`'s locks."""
    for _ in range(1500):
        row = admin.execute(_BLOCKED_BY, (pid,)).fetchone()
        if row is not None and row[0] >= waiters:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {waiters} sessions waited for {pid}")


def test_a_delete_under_way_and_a_reenable_of_its_subscription_do_not_deadlock(api: ApiHarness, local: None) -> None:
    """The delete has removed the deliveries and waits for the subscription; the re-enable waits for those
    deliveries before it locks the subscription, and finds it gone (404) once the delete is done (204)."""
    handle, headers = tenant(api, "lock-order-reenable-delete")
    created = api.client.post(HOOKS, json={"url": Receiver().url, "event_types": ["*"]}, headers=headers)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    emit(handle.id, "intent.created", "intent.updated")
    answers: dict[str, Any] = {}
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin:
        # As the sender leaves a subscription whose delivery failed for good: disabled, the delivery failed.
        admin.execute("UPDATE app.webhook_deliveries SET state = 'failed' WHERE subscription_id = %s", (sid,))
        admin.execute(
            "UPDATE app.webhook_subscriptions SET enabled = false, disabled_reason = 'x' WHERE id = %s", (sid,)
        )
        deleting = threading.Thread(
            target=lambda: answers.update(delete=api.client.delete(f"{HOOKS}/{sid}", headers=headers))
        )
        enabling = threading.Thread(
            target=lambda: answers.update(
                patch=api.client.patch(f"{HOOKS}/{sid}", json={"enabled": True}, headers=headers)
            )
        )
        # A relay's fan-out holds the subscription FOR KEY SHARE: the delete removes the deliveries, then waits for
        # it at the subscription; the re-enable, which that lock does not hold up, comes in meanwhile.
        with psycopg.connect(api.admin_url, dbname="quantum") as relay:
            relay.execute("SELECT 1 FROM app.webhook_subscriptions WHERE id = %s FOR KEY SHARE", (sid,))
            relay_pid = relay.info.backend_pid
            deleting.start()
            _wait_blocked_by(admin, relay_pid, 1)
            enabling.start()
            row = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (relay_pid,)
            ).fetchone()
            assert row is not None
            _wait_blocked_by(admin, row[0], 1)  # the re-enable waits for the delete
        deleting.join(60)
        enabling.join(60)
        left = admin.execute("SELECT count(*) FROM app.webhook_deliveries WHERE subscription_id = %s", (sid,))
        assert left.fetchone() == (0,)
    assert answers["delete"].status_code == 204, answers["delete"].text
    assert answers["patch"].status_code == 404, answers["patch"].text


def test_a_reenable_and_a_delete_take_the_failed_deliveries_in_one_order(api: ApiHarness, local: None) -> None:
    """A delete locks the deliveries a re-enable resumes as the re-enable does, by id, before its scan removes them
    in the table's order: the two wait for each other's rows in one order, and both apply."""
    handle, headers = tenant(api, "lock-order-deliveries")
    created = api.client.post(HOOKS, json={"url": Receiver().url, "event_types": ["*"]}, headers=headers)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    emit(handle.id, "intent.created", "intent.updated")
    answers: dict[str, Any] = {}
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin:
        ids = [
            row[0]
            for row in admin.execute(
                "SELECT id FROM app.webhook_deliveries WHERE subscription_id = %s ORDER BY id", (sid,)
            ).fetchall()
        ]
        assert len(ids) == 2
        # Failed, the later one first: its row now lies before the earlier one's in the table, the order a delete's
        # scan finds them in, where a re-enable locks them by id.
        for delivery_id in reversed(ids):
            admin.execute("UPDATE app.webhook_deliveries SET state = 'failed' WHERE id = %s", (delivery_id,))
        admin.execute(
            "UPDATE app.webhook_subscriptions SET enabled = false, disabled_reason = 'x' WHERE id = %s", (sid,)
        )
        enabling = threading.Thread(
            target=lambda: answers.update(
                patch=api.client.patch(f"{HOOKS}/{sid}", json={"enabled": True}, headers=headers)
            )
        )

        def delete_by_table_order() -> None:
            # The route's delete, its function's scan held to the table's order (where the later delivery lies
            # first), whichever index the planner would otherwise pick.
            try:
                with tenant_transaction(handle.id) as conn:
                    conn.execute("SET LOCAL enable_indexscan = off")
                    conn.execute("SET LOCAL enable_bitmapscan = off")
                    answers["delete"] = webhook_store.delete(conn, uuid.UUID(sid))
            except psycopg.Error as exc:
                answers["delete"] = exc

        deleting = threading.Thread(target=delete_by_table_order)
        # Another transaction holds the first delivery: both wait for it, the re-enable first.
        with psycopg.connect(api.admin_url, dbname="quantum") as holder:
            holder.execute("SELECT 1 FROM app.webhook_deliveries WHERE id = %s FOR UPDATE", (ids[0],))
            holder_pid = holder.info.backend_pid
            enabling.start()
            _wait_blocked_by(admin, holder_pid, 1)
            deleting.start()
            for _ in range(1500):  # until the delete waits too, for the holder or for the re-enable
                row = admin.execute(_WAITING).fetchone()
                if row is not None and row[0] >= 2:
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the delete did not wait")
        enabling.join(60)
        deleting.join(60)
    assert answers["patch"].status_code == 200, answers["patch"].text
    assert answers["delete"] is True, answers["delete"]
