# intent_ref: platform.tenants
"""The control plane's tenant change holds the row it checks the If-Match against until it writes: two operators'
changes sent with one ETag both passed an unlocked read, and the second overwrote the first with 200."""

from __future__ import annotations

import pytest

from shared.db.session import platform_transaction
from shared.tenants.models import TenantUpdate
from shared.tenants.repository import get_tenant, update_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_etag_settings_webhooks import RequestWhileHeld

pytestmark = pytest.mark.integration

PLATFORM_ADMIN = ["Platform.Admin"]


def test_a_change_that_waited_for_another_change_of_the_tenant_is_412_and_changes_nothing(api: ApiHarness) -> None:
    api.provision("held-operators")
    customer = api.provision("held-customer")
    admin = api.headers("held-operators", PLATFORM_ADMIN)
    path = f"/api/v1/tenants/{customer.id}"
    etag = api.client.get(path, headers=admin).headers["etag"]
    with platform_transaction() as conn:  # another operator's change, not yet committed
        assert update_tenant(conn, customer.id, TenantUpdate(display_name="First")) is not None
        sent = RequestWhileHeld(
            api,
            conn,
            lambda: api.client.patch(path, json={"display_name": "Second"}, headers={**admin, "If-Match": etag}),
        )
    answer = sent.answer()
    assert answer.status_code == 412, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    with platform_transaction() as conn:
        shown = get_tenant(conn, customer.id)
    assert shown is not None and shown.display_name == "First"
