# intent_ref: platform.identity
"""The hostile suite at API level: tokens, tenant status, isolation, ABAC, audit, rate limits.

Every refused request is checked to have changed nothing.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.api.security import token_validator
from shared.policy import tenant_policies
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

PLATFORM_ADMIN = ["Platform.Admin"]
TENANT_ADMIN = ["Tenant.Admin"]


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("operator")
    api.provision("alpha")
    api.provision("beta")
    api.provision("frozen", status="suspended")
    api.provision("tiny", quotas={"requests_per_minute": 1, "burst": 2})


def _problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


# ---- authentication ---------------------------------------------------------------------------------


def test_missing_token_is_401_with_challenge(api: ApiHarness) -> None:
    body = _problem(api.client.get("/api/v1/me"), 401)
    assert "bearer" in body["detail"].lower()
    assert api.client.get("/api/v1/me").headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "api://someone-else"},
        {"exp": 1_000_000_000},
        {"iss": "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0"},
        {"tid": None},
        {"oid": None},
        {"ver": "1.0"},
    ],
)
def test_bad_claims_are_401_and_never_echo_the_token(api: ApiHarness, claims: dict) -> None:
    token = api.token("alpha", ["Intent.Reader"], claims=claims)
    response = api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    body = _problem(response, 401)
    assert token not in response.text and token[-20:] not in body["detail"]


def test_unsigned_token_is_401(api: ApiHarness) -> None:
    header_payload = api.token("alpha", ["Tenant.Admin"]).rsplit(".", 1)[0]
    _problem(api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {header_payload}."}), 401)


def test_unprovisioned_tenant_is_401(api: ApiHarness) -> None:
    response = api.client.get("/api/v1/me", headers=api.headers(str(uuid.uuid4()), ["Tenant.Admin"]))
    assert "not provisioned" in _problem(response, 401)["detail"]


def test_me_returns_the_principal(api: ApiHarness) -> None:
    oid = str(uuid.uuid4())
    body = api.client.get("/api/v1/me", headers=api.headers("alpha", ["Intent.Reader"], oid=oid)).json()
    assert body["tenant_id"] == str(api.tenants["alpha"].id)
    assert body["principal_id"] == f"{api.tenants['alpha'].entra_id}/{oid}"
    assert body["roles"] == ["Intent.Reader"]


def test_suspended_tenant_is_403_and_audited(api: ApiHarness) -> None:
    before = len(api.audit_rows("frozen"))
    body = _problem(api.client.get("/api/v1/me", headers=api.headers("frozen", TENANT_ADMIN)), 403)
    assert body["reason"] == "tenant_suspended"
    rows = api.audit_rows("frozen")
    assert len(rows) == before + 1
    assert (rows[-1]["decision"], rows[-1]["reason"]) == ("deny", "tenant_suspended")


# ---- control plane ------------------------------------------------------------------------------------


def test_platform_admin_counts_only_from_the_operators_own_entra_tenant(api: ApiHarness) -> None:
    # The API is multi-tenant: a customer's administrators assign its app roles in their own directory, so they can
    # give themselves Platform.Admin; only the operators' tenant (QP_OPERATOR_ENTRA_TENANT_ID) may hold it.
    operator, customer = api.provision("operators-own"), api.provision("self-made-admin")
    app = api.client.app
    app.dependency_overrides[token_validator] = lambda: api.validator(operator_tenant=operator.entra_id)  # type: ignore[attr-defined]
    try:
        forged = api.headers("self-made-admin", [*PLATFORM_ADMIN, "Intent.Reader"])
        before = api.table_snapshot("tenants")
        assert _problem(api.client.get("/api/v1/tenants", headers=forged), 403)
        victim = api.client.get(f"/api/v1/tenants/{operator.id}", headers=forged)
        assert _problem(victim, 403)
        spec = {"name": f"x-{uuid.uuid4().hex[:8]}", "entra_tenant_id": str(uuid.uuid4())}
        assert _problem(api.client.post("/api/v1/tenants", json=spec, headers=forged), 403)
        assert api.table_snapshot("tenants") == before
        # Its own tenant's roles still count, and the operators' Platform.Admin does.
        assert api.client.get("/api/v1/intents", headers=forged).status_code == 200
        listed = api.client.get("/api/v1/tenants", headers=api.headers("operators-own", PLATFORM_ADMIN))
        assert listed.status_code == 200, listed.text
        assert customer.id != operator.id
    finally:
        app.dependency_overrides[token_validator] = lambda: api.validator()  # type: ignore[attr-defined]


def test_platform_admin_provisions_reads_and_changes_a_tenant(api: ApiHarness) -> None:
    admin = api.headers("operator", PLATFORM_ADMIN)
    spec = {
        "name": f"new-{uuid.uuid4().hex[:8]}",
        "entra_tenant_id": str(uuid.uuid4()),
        "allowed_targets": ["staging"],
        "quotas": {"requests_per_minute": 120},
    }
    created = api.client.post("/api/v1/tenants", json=spec, headers=admin)
    assert created.status_code == 201, created.text
    tenant = created.json()
    assert tenant["status"] == "active" and tenant["allowed_targets"] == ["staging"]
    assert created.headers["location"] == f"/api/v1/tenants/{tenant['id']}"
    assert _problem(api.client.post("/api/v1/tenants", json=spec, headers=admin), 409)

    read = api.client.get(f"/api/v1/tenants/{tenant['id']}", headers=admin)
    assert read.json()["name"] == spec["name"]
    etag = read.headers["etag"]
    _problem(api.client.patch(f"/api/v1/tenants/{tenant['id']}", json={"status": "suspended"}, headers=admin), 428)
    _problem(
        api.client.patch(
            f"/api/v1/tenants/{tenant['id']}", json={"status": "suspended"}, headers={**admin, "If-Match": '"stale"'}
        ),
        412,
    )
    patched = api.client.patch(
        f"/api/v1/tenants/{tenant['id']}", json={"status": "suspended"}, headers={**admin, "If-Match": etag}
    )
    assert patched.status_code == 200 and patched.json()["status"] == "suspended"
    assert patched.json()["quotas"]["requests_per_minute"] == 120
    assert patched.headers["etag"] != etag
    # JSON merge semantics: a quota sent as a number is set, sent as null it is removed (the default applies).
    capped = api.client.patch(
        f"/api/v1/tenants/{tenant['id']}",
        json={"quotas": {"max_concurrent_executions": 1}},
        headers={**admin, "If-Match": patched.headers["etag"]},
    )
    assert capped.json()["quotas"]["max_concurrent_executions"] == 1, capped.text
    uncapped = api.client.patch(
        f"/api/v1/tenants/{tenant['id']}",
        json={"quotas": {"max_concurrent_executions": None}},
        headers={**admin, "If-Match": capped.headers["etag"]},
    )
    assert uncapped.status_code == 200, uncapped.text
    quotas = api.client.get(f"/api/v1/tenants/{tenant['id']}", headers=admin).json()["quotas"]
    assert (quotas["max_concurrent_executions"], quotas["requests_per_minute"]) == (None, 120)

    names = []
    cursor = None
    while True:
        page = api.client.get(
            "/api/v1/tenants", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=admin
        ).json()
        names += [t["name"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert spec["name"] in names and names == sorted(names) and len(names) == len(set(names))


def test_a_tenant_create_with_an_idempotency_key_provisions_once_per_caller(api: ApiHarness) -> None:
    admin, other_admin = (api.headers("operator", PLATFORM_ADMIN, oid=str(uuid.uuid4())) for _ in range(2))
    spec = {"name": f"idem-{uuid.uuid4().hex[:8]}", "entra_tenant_id": str(uuid.uuid4())}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.client.post("/api/v1/tenants", json=spec, headers={**admin, **key})
    assert first.status_code == 201, first.text
    again = api.client.post("/api/v1/tenants", json=spec, headers={**admin, **key})
    assert again.status_code == 201 and again.json() == first.json()
    assert (again.headers["location"], again.headers["etag"]) == (first.headers["location"], first.headers["etag"])
    assert len([row for row in api.table_snapshot("tenants") if spec["name"] in row]) == 1
    # The same key for another body is refused; without the key, the same body is the conflict it always was.
    reused = _problem(
        api.client.post("/api/v1/tenants", json={**spec, "name": spec["name"] + "-x"}, headers={**admin, **key}), 422
    )
    assert reused["type"].endswith("/idempotency-key")
    _problem(api.client.post("/api/v1/tenants", json=spec, headers=admin), 409)
    # A key is its caller's own: another operator's same key does that operator's work.
    other_spec = {"name": spec["name"] + "-o", "entra_tenant_id": str(uuid.uuid4())}
    other = api.client.post("/api/v1/tenants", json=other_spec, headers={**other_admin, **key})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    # A malformed key changes nothing.
    before = api.table_snapshot("tenants")
    _problem(
        api.client.post(
            "/api/v1/tenants", json={**spec, "name": spec["name"] + "-m"}, headers={**admin, "Idempotency-Key": "a,b"}
        ),
        400,
    )
    assert api.table_snapshot("tenants") == before


def test_the_control_planes_change_is_audited_in_its_own_transaction(api: ApiHarness) -> None:
    admin = api.headers("operator", PLATFORM_ADMIN)
    spec = {"name": f"audited-{uuid.uuid4().hex[:8]}", "entra_tenant_id": str(uuid.uuid4())}
    created = api.client.post("/api/v1/tenants", json=spec, headers=admin)
    assert created.status_code == 201, created.text
    tenant_id = created.json()["id"]
    etag = created.headers["etag"]
    changed = api.client.patch(
        f"/api/v1/tenants/{tenant_id}", json={"display_name": "Audited"}, headers={**admin, "If-Match": etag}
    )
    assert changed.status_code == 200, changed.text
    # A change that is refused (the same name again) commits nothing, and records no change.
    _problem(api.client.post("/api/v1/tenants", json=spec, headers=admin), 409)
    applied = [
        (row["action"], row["resource_type"], row["detail"])
        for row in api.audit_rows("operator")
        if row["reason"] == "applied" and row["resource_id"] == tenant_id
    ]
    assert applied == [
        ("tenant.create", "Tenant", {"name": spec["name"], "status": "active"}),
        ("tenant.update", "Tenant", {"display_name": "Audited"}),
    ]


def test_suspension_takes_effect_for_that_tenants_callers(api: ApiHarness) -> None:
    victim = api.provision("victim")
    admin = api.headers("operator", PLATFORM_ADMIN)
    assert api.client.get("/api/v1/me", headers=api.headers("victim", ["Intent.Reader"])).status_code == 200
    etag = api.client.get(f"/api/v1/tenants/{victim.id}", headers=admin).headers["etag"]
    api.client.patch(f"/api/v1/tenants/{victim.id}", json={"status": "suspended"}, headers={**admin, "If-Match": etag})
    _problem(api.client.get("/api/v1/me", headers=api.headers("victim", ["Intent.Reader"])), 403)


def test_non_admins_cannot_touch_the_control_plane(api: ApiHarness) -> None:
    before = api.table_snapshot("tenants")
    # The last caller has no app role at all, only a delegated scope.
    for roles, claims in ((TENANT_ADMIN, None), (["Intent.Author"], None), ([], {"scp": "access_as_user"})):
        headers = api.headers("alpha", roles, claims=claims)
        body = _problem(
            api.client.post(
                "/api/v1/tenants", headers=headers, json={"name": "sneaky", "entra_tenant_id": str(uuid.uuid4())}
            ),
            403,
        )
        assert body["reason"] == "role_required"
        _problem(api.client.get("/api/v1/tenants", headers=headers), 403)
    assert api.table_snapshot("tenants") == before
    denials = [r for r in api.audit_rows("alpha") if r["action"] == "tenant.create"]
    assert len(denials) == 3 and all(r["decision"] == "deny" for r in denials)


def test_platform_admin_sees_no_tenant_data(api: ApiHarness) -> None:
    admin = api.headers("operator", PLATFORM_ADMIN)
    for path in ("/api/v1/audit", "/api/v1/policies", "/api/v1/tenant"):
        _problem(api.client.get(path, headers=admin), 403)


# ---- tenant policies and audit --------------------------------------------------------------------------


def test_tenant_policy_lifecycle_and_isolation(api: ApiHarness) -> None:
    alpha, beta = api.headers("alpha", TENANT_ADMIN), api.headers("beta", TENANT_ADMIN)
    invalid = api.client.post(
        "/api/v1/policies",
        headers=alpha,
        json={"name": "broken", "policy": "forbid (principal, action, resource) when {"},
    )
    assert _problem(invalid, 422)["errors"][0]["pointer"] == "/policy"

    policy = (
        'forbid (principal, action == QP::Action::"tenant.settings.read", resource) '
        'when { principal.roles.contains("Tenant.Admin") };'
    )
    created = api.client.post("/api/v1/policies", headers=alpha, json={"name": "no-settings", "policy": policy})
    assert created.status_code == 201, created.text
    policy_id = created.json()["id"]
    assert [p["name"] for p in api.client.get("/api/v1/policies", headers=alpha).json()["items"]] == ["no-settings"]
    assert api.client.get("/api/v1/policies", headers=beta).json()["items"] == []

    denied = _problem(api.client.get("/api/v1/tenant", headers=alpha), 403)
    assert denied["reason"] == "denied_by_tenant_policy"
    assert api.client.get("/api/v1/tenant", headers=beta).status_code == 200

    # Another tenant's policy id is 404 and stays in place.
    _problem(api.client.delete(f"/api/v1/policies/{policy_id}", headers=beta), 404)
    assert len(api.client.get("/api/v1/policies", headers=alpha).json()["items"]) == 1
    assert api.client.delete(f"/api/v1/policies/{policy_id}", headers=alpha).status_code == 204
    assert api.client.get("/api/v1/tenant", headers=alpha).status_code == 200


def test_a_tenants_policies_are_bounded_even_when_created_at_once(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every decision of the tenant evaluates a set of all its policies, built again after each change: 400 of
    # 10,000 characters took seconds to build, several times at once, while other tenants waited for the cores.
    monkeypatch.setattr(tenant_policies, "MAX_TENANT_POLICIES", 3)
    api.provision("policy-quota")
    admin = api.headers("policy-quota", TENANT_ADMIN)
    body = 'forbid (principal, action == QP::Action::"tenant.settings.read", resource) when { false };'
    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(
            pool.map(
                lambda n: api.client.post("/api/v1/policies", headers=admin, json={"name": f"p{n}", "policy": body}),
                range(5),
            )
        )
    assert sorted(a.status_code for a in answers) == [201, 201, 201, 409, 409]
    refused = next(a for a in answers if a.status_code == 409)
    assert _problem(refused, 409)["type"].endswith("/policy-quota") and refused.json()["limit"] == 3
    assert len(api.client.get("/api/v1/policies", headers=admin).json()["items"]) == 3


def test_audit_is_per_tenant_filtered_and_paginated(api: ApiHarness) -> None:
    alpha = api.headers("alpha", TENANT_ADMIN)
    for _ in range(3):
        api.client.get("/api/v1/tenants", headers=api.headers("alpha", ["Intent.Reader"]))  # denied, audited
    page = api.client.get("/api/v1/audit", params={"decision": "deny", "limit": 2}, headers=alpha).json()
    seen = list(page["items"])
    while page["next_cursor"]:
        page = api.client.get(
            "/api/v1/audit", params={"decision": "deny", "limit": 2, "cursor": page["next_cursor"]}, headers=alpha
        ).json()
        seen += page["items"]
    assert len(seen) >= 3 and all(item["decision"] == "deny" for item in seen)
    assert len({item["id"] for item in seen}) == len(seen)
    beta_ids = {str(r["id"]) for r in api.audit_rows("beta")}
    assert not beta_ids & {item["id"] for item in seen}
    _problem(api.client.get("/api/v1/audit", params={"cursor": "not-a-cursor"}, headers=alpha), 400)
    naive = {"since": "2026-01-01T00:00:00", "until": "2026-01-02T00:00:00"}
    refused = _problem(api.client.get("/api/v1/audit", params=naive, headers=alpha), 422)
    assert refused["type"].endswith("/validation-error") and refused["detail"] == "Times need a UTC offset."
    assert [e["pointer"] for e in refused["errors"]] == ["/query/since", "/query/until"]


def test_every_decision_leaves_exactly_one_record(api: ApiHarness) -> None:
    before = len(api.audit_rows("beta"))
    assert api.client.get("/api/v1/tenant", headers=api.headers("beta", TENANT_ADMIN)).status_code == 200
    _problem(api.client.get("/api/v1/tenant", headers=api.headers("beta", ["Intent.Reader"])), 403)
    rows = api.audit_rows("beta")[before:]
    assert [(r["action"], r["decision"]) for r in rows] == [
        ("tenant.settings.read", "allow"),
        ("tenant.settings.read", "deny"),
    ]
    assert all(r["request_id"] for r in rows)


# ---- rate limits ------------------------------------------------------------------------------------------


def test_over_the_rate_is_429_with_retry_after(api: ApiHarness) -> None:
    headers = api.headers("tiny", ["Intent.Reader"])
    statuses = [api.client.get("/api/v1/me", headers=headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    response = api.client.get("/api/v1/me", headers=headers)
    _problem(response, 429)
    assert int(response.headers["retry-after"]) >= 1
    # Another tenant is not affected.
    assert api.client.get("/api/v1/me", headers=api.headers("beta", ["Intent.Reader"])).status_code == 200
