# intent_ref: platform.tenants
"""The control plane's tenant change holds the row it checks the If-Match against until it writes: two operators'
changes sent with one ETag both passed an unlocked read, and the second overwrote the first with 200."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from shared.db.session import platform_transaction
from shared.tenants.models import TenantUpdate
from shared.tenants.repository import get_tenant, update_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

PLATFORM_ADMIN = ["Platform.Admin"]


def test_a_change_that_waited_for_another_change_of_the_tenant_is_412_and_changes_nothing(api: ApiHarness) -> None:
    api.provision("held-operators")
    customer = api.provision("held-customer")
    admin = api.headers("held-operators", PLATFORM_ADMIN)
    path = f"/api/v1/tenants/{customer.id}"
    etag = api.client.get(path, headers=admin).headers["etag"]
    answers: list[Any] = []
    sender = threading.Thread(
        target=lambda: answers.append(
            api.client.patch(path, json={"display_name": "Second"}, headers={**admin, "If-Match": etag})
        )
    )
    blocked = False
    with platform_transaction() as conn:  # another operator's change, not yet committed
        assert update_tenant(conn, customer.id, TenantUpdate(display_name="First")) is not None
        sender.start()
        holder = conn.info.backend_pid
        with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin_conn:
            for _ in range(1500):
                query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
                row = admin_conn.execute(query, (holder,)).fetchone()
                if row is not None and row[0] >= 1:
                    blocked = True
                    break
                if not sender.is_alive():
                    break
                time.sleep(0.02)
    sender.join(60)
    assert not sender.is_alive() and answers
    assert blocked, f"the change did not wait for the one held open: {answers[0].status_code}"
    assert answers[0].status_code == 412, answers[0].text
    assert answers[0].headers["content-type"] == "application/problem+json"
    with platform_transaction() as conn:
        shown = get_tenant(conn, customer.id)
    assert shown is not None and shown.display_name == "First"
