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


def test_a_change_that_changes_nothing_keeps_the_tenants_etags(api: ApiHarness) -> None:
    api.provision("noop-operators")
    customer = api.provision("noop-customer")
    admin = api.headers("noop-operators", PLATFORM_ADMIN)
    own = api.headers("noop-customer", ["Tenant.Admin"])
    path = f"/api/v1/tenants/{customer.id}"
    shown = api.client.get(path, headers=admin)
    settings_etag = api.client.get("/api/v1/tenant", headers=own).headers["etag"]
    same = {key: shown.json()[key] for key in ("display_name", "status", "allowed_modules", "allowed_targets")}
    answer = api.client.patch(path, json=same, headers={**admin, "If-Match": shown.headers["etag"]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["etag"] == shown.headers["etag"]
    assert answer.json()["updated_at"] == shown.json()["updated_at"]
    assert api.client.get("/api/v1/tenant", headers=own).headers["etag"] == settings_etag
    # A real change still moves both.
    changed = api.client.patch(
        path, json={"display_name": "Renamed"}, headers={**admin, "If-Match": answer.headers["etag"]}
    )
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] != shown.headers["etag"]
    assert api.client.get("/api/v1/tenant", headers=own).headers["etag"] != settings_etag


def test_if_match_lines_and_a_star_are_read_as_the_list_they_are(api: ApiHarness) -> None:
    # Two If-Match lines are one list (the edge joins them): the current ETag among them matches, and `*` matches any
    # current tenant; the whole header was compared with the ETag, so both answered 412 "changed since".
    api.provision("lines-operators")
    customer = api.provision("lines-customer")
    admin = api.headers("lines-operators", PLATFORM_ADMIN)
    path = f"/api/v1/tenants/{customer.id}"
    current = api.client.get(path, headers=admin).headers["etag"]
    lines = [*admin.items(), ("If-Match", '"stale"'), ("If-Match", current)]
    changed = api.client.patch(path, json={"display_name": "Lines"}, headers=lines)
    assert changed.status_code == 200, changed.text
    stars = [*admin.items(), ("If-Match", "*"), ("If-Match", "*")]
    starred = api.client.patch(path, json={"display_name": "Stars"}, headers=stars)
    assert starred.status_code == 200, starred.text
    stale = api.client.patch(path, json={"display_name": "Late"}, headers={**admin, "If-Match": current})
    assert stale.status_code == 412, stale.text
