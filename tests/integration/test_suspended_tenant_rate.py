# intent_ref: platform.rate-limits
"""A suspended tenant's requests are counted against its rate as any other's before they are refused: over its rate
they answer 429 and write no deny record, so its clients cannot fill its audit trail as fast as they can send."""

from __future__ import annotations

import pytest

from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

QUOTAS = {"burst": 2, "requests_per_minute": 1}


def test_a_suspended_tenant_over_its_rate_gets_the_active_tenants_429_and_no_record(api: ApiHarness) -> None:
    api.provision("rate-active", quotas=QUOTAS)
    api.provision("rate-suspended", status="suspended", quotas=QUOTAS)
    active = [
        api.client.get("/api/v1/intents", headers=api.headers("rate-active", ["Intent.Reader"])) for _ in range(3)
    ]
    suspended = [
        api.client.get("/api/v1/intents", headers=api.headers("rate-suspended", ["Intent.Reader"])) for _ in range(6)
    ]

    assert [r.status_code for r in active] == [200, 200, 429]
    assert [r.status_code for r in suspended] == [403, 403, 429, 429, 429, 429]
    assert [r.json()["reason"] for r in suspended[:2]] == ["tenant_suspended"] * 2
    # The same answer as the active tenant's: problem type, Retry-After.
    over = suspended[-1]
    assert over.headers["content-type"] == "application/problem+json"
    assert over.json()["type"] == active[-1].json()["type"]
    assert int(over.headers["Retry-After"]) >= 1
    # Only the requests within the rate were recorded.
    rows = api.audit_rows("rate-suspended")
    assert [(row["decision"], row["reason"]) for row in rows] == [("deny", "tenant_suspended")] * 2
