# intent_ref: platform.access-control
"""What a tenant's policies may cost the host: a policy whose matching would hold the engine (and the GIL) for long is
refused on save and never evaluated if stored, and the remembered decisions keep one copy of the tenant's texts
however often they are read again or changed (ADR 0011, amended 2026-12-07)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import cedarpy
import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.policy import tenant_policies
from shared.policy.authorizer import get_authorizer
from shared.policy.policy_text import MAX_TENANT_POLICY_COST, MAX_TENANT_POLICY_TOTAL_CHARS, policy_cost
from shared.policy.tenant_policies import policy_cache, tenant_policy_texts
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_list_reads_honour_forbids import _executions
from tests.integration.test_registry_api import ADMIN, READER, problem, provision

pytestmark = pytest.mark.integration

POLICIES, EXECUTIONS = "/api/v1/policies", "/api/v1/executions"
NO_STAGING = (
    'forbid (principal, action == QP::Action::"execution.read", resource) when { resource.labels.contains("s=1") };'
)


def _slow(index: int) -> str:
    """A schema-valid forbid whose one `like` cost ~10 ms of engine time with the GIL held."""
    return (
        'forbid (principal, action in [QP::Action::"execution.read", QP::Action::"intent.read"], resource) '
        f'when {{ "{"a" * 7300}" like "*{"a" * 2470}b" }} when {{ resource != QP::Execution::"x{index}" }};'
    )


def _engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one per Cedar evaluation with tenant policies from now on (the platform's own are cheap)."""
    calls: list[int] = []
    real = cedarpy.is_authorized
    platform_only = get_authorizer()._policies

    def counted(request: Any, policies: Any, *args: Any, **kwargs: Any) -> Any:
        if policies is not platform_only:
            calls.append(1)
        return real(request, policies, *args, **kwargs)

    monkeypatch.setattr(cedarpy, "is_authorized", counted)
    return calls


def test_a_policy_whose_matching_would_hold_the_engine_is_refused(api: ApiHarness) -> None:  # noqa: F811
    tenant = provision(api, "cost-save")
    admin = api.headers(tenant, ADMIN)
    for name, text, says in [
        ("slow", _slow(0), "string literal"),
        (
            "constant",
            'forbid (principal, action == QP::Action::"intent.read", resource) when { "ab" like "*b" };',
            "like",
        ),
    ]:
        refused = problem(api.client.post(POLICIES, json={"name": name, "policy": text}, headers=admin), 422)
        assert refused["type"].endswith("invalid-policy"), refused
        assert [error["pointer"] for error in refused["errors"]] == ["/policy"]
        assert says in refused["errors"][0]["detail"], refused
    assert api.client.get(POLICIES, headers=admin).json()["items"] == []


def test_stored_costly_policies_fail_closed_without_reaching_the_engine(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = provision(api, "cost-stored")
    other = provision(api, "cost-bystander")
    _executions(api, app_pool, tenant, {"team": "web"}, count=20)
    tenant_id = api.tenants[tenant].id
    # Saved before the bound (or behind the API): 50 of them.
    with tenant_transaction(tenant_id) as conn:
        for index in range(50):
            conn.execute(
                "INSERT INTO app.tenant_policies (tenant_id, name, description, policy, created_by)"
                " VALUES (%s, %s, '', %s, 'seed')",
                (tenant_id, f"slow-{index:02d}", _slow(index)),
            )
    policy_cache.forget(tenant_id)
    calls = _engine_calls(monkeypatch)
    listed = api.client.get(f"{EXECUTIONS}?limit=20", headers=api.headers(tenant, READER))
    assert problem(listed, 403)["reason"] == "policy_error"
    assert calls == []  # not one evaluation, let alone 20 rows × 50 slow matches
    # Another tenant is decided as before, and the admin can still remove what broke its tenant.
    assert api.client.get("/api/v1/me", headers=api.headers(other, READER)).status_code == 200
    admin = api.headers(tenant, ADMIN)
    for item in api.client.get(POLICIES, headers=admin).json()["items"]:
        assert api.client.delete(f"{POLICIES}/{item['id']}", headers=admin).status_code == 204
    assert api.client.get(f"{EXECUTIONS}?limit=20", headers=api.headers(tenant, READER)).status_code == 200


def test_policies_read_again_or_changed_are_remembered_once(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = provision(api, "cost-memory")
    tenant_id = api.tenants[tenant].id
    admin = api.headers(tenant, ADMIN)
    (plain,) = _executions(api, app_pool, tenant, {"team": "web"})
    (labelled,) = _executions(api, app_pool, tenant, {"s": "1"})
    for cycle in range(12):  # add, then delete, the forbid; one decision by a new caller after each change
        saved = api.client.post(POLICIES, json={"name": "no-s", "policy": NO_STAGING}, headers=admin)
        assert saved.status_code == 201, saved.text
        reader = api.headers(tenant, READER, oid=str(uuid.uuid4()))
        assert problem(api.client.get(f"{EXECUTIONS}/{labelled}", headers=reader), 403)["reason"] == (
            "denied_by_tenant_policy"
        ), cycle
        assert api.client.get(f"{EXECUTIONS}/{plain}", headers=reader).status_code == 200
        assert api.client.delete(f"{POLICIES}/{saved.json()['id']}", headers=admin).status_code == 204
        reader = api.headers(tenant, READER, oid=str(uuid.uuid4()))
        assert api.client.get(f"{EXECUTIONS}/{labelled}", headers=reader).status_code == 200, cycle
    # Texts read again unchanged come back as the tuple read before, not as another copy of it.
    api.client.post(POLICIES, json={"name": "no-s", "policy": NO_STAGING}, headers=admin)
    first = tenant_policy_texts(tenant_id)
    policy_cache.forget(tenant_id)
    assert tenant_policy_texts(tenant_id) is first
    # The remembered decisions keep no copy of the texts (nor of the request or entities): each is keyed by one
    # SHA-256 of the policy set's digest, the request and the entities, whatever the number of changes and callers.
    keys = get_authorizer()._decisions.keys()
    assert keys and all(isinstance(key, bytes) and len(key) == 32 for key in keys)


def _padded(size: int) -> str:
    """A valid forbid of exactly `size` characters (a comment fills it out)."""
    return NO_STAGING + "\n//" + "a" * (size - len(NO_STAGING) - 3)


def test_a_policy_past_the_tenants_total_size_is_refused_and_nothing_written(api: ApiHarness) -> None:  # noqa: F811
    tenant = provision(api, "cost-total")
    admin = api.headers(tenant, ADMIN)
    for index in range(3):  # 30,000 of the 32,000 characters
        saved = api.client.post(POLICIES, json={"name": f"big-{index}", "policy": _padded(10_000)}, headers=admin)
        assert saved.status_code == 201, saved.text
    refused = problem(api.client.post(POLICIES, json={"name": "over", "policy": _padded(2_001)}, headers=admin), 422)
    assert refused["type"].endswith("invalid-policy"), refused
    assert refused["limit"] == MAX_TENANT_POLICY_TOTAL_CHARS
    assert [error["pointer"] for error in refused["errors"]] == ["/policy"]
    assert str(MAX_TENANT_POLICY_TOTAL_CHARS) in refused["errors"][0]["detail"], refused
    names = [item["name"] for item in api.client.get(POLICIES, headers=admin).json()["items"]]
    assert names == ["big-0", "big-1", "big-2"]
    # Up to the bound exactly is accepted.
    fits = api.client.post(POLICIES, json={"name": "fits", "policy": _padded(2_000)}, headers=admin)
    assert fits.status_code == 201, fits.text


def _nested(size: int) -> str:
    """The review's forbid: `size` characters of nested set literals, built on every decision (~5 ms at 31,968)."""
    head = (
        'forbid (principal, action == QP::Action::"execution.read", resource) when { resource != QP::Execution::"x" }'
    )
    shell = len(f"{head} when {{ [].contains([[[2]]]) }};")
    return f"{head} when {{ [{','.join(['[[[1]]]'] * ((size - shell + 1) // 8))}].contains([[[2]]]) }};"


def _flat(index: int) -> str:
    """A valid forbid of about 4,300 characters and 2,100 expression nodes (a list of numbers)."""
    numbers = ",".join(str(index) for _ in range(2_100))
    return f'forbid (principal, action == QP::Action::"execution.read", resource) when {{ [{numbers}].contains(-1) }};'


def test_policies_costing_a_decision_more_than_the_budget_are_refused_and_nothing_written(
    api: ApiHarness,  # noqa: F811
) -> None:
    tenant = provision(api, "cost-nodes")
    admin = api.headers(tenant, ADMIN)
    for name, text, says in [
        ("nested", _nested(10_000), "may not hold another set or record literal"),
        ("clauses", NO_STAGING.removesuffix(";") + "unless{false}" * 760 + ";", "`when` / `unless` clauses"),
    ]:
        assert len(text) <= 10_000
        refused = problem(api.client.post(POLICIES, json={"name": name, "policy": text}, headers=admin), 422)
        assert refused["type"].endswith("invalid-policy"), refused
        assert says in refused["errors"][0]["detail"], refused
    # Each fits the budget on its own; the second would take the tenant's past it.
    assert policy_cost(_flat(0)) <= MAX_TENANT_POLICY_COST < policy_cost(_flat(0)) + policy_cost(_flat(1))
    saved = api.client.post(POLICIES, json={"name": "flat-0", "policy": _flat(0)}, headers=admin)
    assert saved.status_code == 201, saved.text
    refused = problem(api.client.post(POLICIES, json={"name": "flat-1", "policy": _flat(1)}, headers=admin), 422)
    assert refused["type"].endswith("invalid-policy"), refused
    assert refused["limit"] == MAX_TENANT_POLICY_COST
    assert [error["pointer"] for error in refused["errors"]] == ["/policy"]
    assert f"at most {MAX_TENANT_POLICY_COST} expression nodes" in refused["errors"][0]["detail"], refused
    assert [item["name"] for item in api.client.get(POLICIES, headers=admin).json()["items"]] == ["flat-0"]


def test_a_forbid_committed_while_a_decision_reads_the_texts_applies_at_once(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = provision(api, "cost-race")
    (labelled,) = _executions(api, app_pool, tenant, {"s": "1"})
    policy_cache.forget(api.tenants[tenant].id)
    real = tenant_policies._read_texts
    read, resume = threading.Event(), threading.Event()

    def paused(conn: Any) -> tuple[str, ...]:
        texts = real(conn)
        if not read.is_set():  # the reader's first read pauses once it has read the texts from before the forbid
            read.set()
            assert resume.wait(30)
        return texts

    monkeypatch.setattr(tenant_policies, "_read_texts", paused)
    answers: list[int] = []
    reader = threading.Thread(
        target=lambda: answers.append(
            api.client.get(f"{EXECUTIONS}/{labelled}", headers=api.headers(tenant, READER)).status_code
        )
    )
    reader.start()
    try:
        assert read.wait(30)
        saved = api.client.post(
            POLICIES, json={"name": "no-s", "policy": NO_STAGING}, headers=api.headers(tenant, ADMIN)
        )
        assert saved.status_code == 201, saved.text
    finally:
        resume.set()
        reader.join(30)
    assert answers == [200]  # decided on what it read before the forbid was committed
    # The next decision reads the forbid, rather than the texts from before it for the texts' TTL.
    again = api.client.get(f"{EXECUTIONS}/{labelled}", headers=api.headers(tenant, READER, oid=str(uuid.uuid4())))
    assert problem(again, 403)["reason"] == "denied_by_tenant_policy"


def _set_of_labels(index: int, size: int = 10_000) -> str:
    """The review's forbid: `[resource.labels, …]` filling `size` characters, 2-3 nodes an element before (a decision
    built it comparing whole label sets: +2.4 ms against 64 labels of ~320 characters)."""
    head = (
        'forbid (principal, action == QP::Action::"execution.read", resource) '
        f'when {{ resource != QP::Execution::"x{index}" }}'
    )
    shell = len(f"{head} when {{ [].isEmpty() }};")
    return f"{head} when {{ [{','.join(['resource.labels'] * ((size - shell + 1) // 16))}].isEmpty() }};"


def test_a_set_of_the_tenants_sets_is_refused_and_stored_ones_fail_closed(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = provision(api, "cost-set-of-sets")
    admin = api.headers(tenant, ADMIN)
    refused = problem(api.client.post(POLICIES, json={"name": "sets", "policy": _set_of_labels(0)}, headers=admin), 422)
    assert refused["type"].endswith("invalid-policy"), refused
    assert f"at most {MAX_TENANT_POLICY_COST} expression nodes" in refused["errors"][0]["detail"], refused
    assert api.client.get(POLICIES, headers=admin).json()["items"] == []
    # Saved before the element count (or behind the API): four of them, 31,992 characters.
    _executions(api, app_pool, tenant, {"team": "web"}, count=5)
    tenant_id = api.tenants[tenant].id
    texts = [_set_of_labels(index) for index in range(3)]
    texts.append(_set_of_labels(3, MAX_TENANT_POLICY_TOTAL_CHARS - sum(map(len, texts))))
    with tenant_transaction(tenant_id) as conn:
        for index, text in enumerate(texts):
            conn.execute(
                "INSERT INTO app.tenant_policies (tenant_id, name, description, policy, created_by)"
                " VALUES (%s, %s, '', %s, 'seed')",
                (tenant_id, f"sets-{index}", text),
            )
    policy_cache.forget(tenant_id)
    calls = _engine_calls(monkeypatch)
    listed = api.client.get(f"{EXECUTIONS}?limit=5", headers=api.headers(tenant, READER))
    assert problem(listed, 403)["reason"] == "policy_error"
    assert calls == []


def test_fifty_honest_label_forbids_are_saved(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:  # noqa: F811
    # Each compares the labels with a two-label literal (~2 µs): a set comparison counted 100 nodes refused the 39th.
    tenant = provision(api, "cost-honest")
    admin = api.headers(tenant, ADMIN)
    for index in range(tenant_policies.MAX_TENANT_POLICIES):
        text = (
            'forbid (principal, action == QP::Action::"execution.read", resource) '
            f'when {{ resource.labels.containsAny(["team=t{index}", "freeze=true"]) }};'
        )
        saved = api.client.post(POLICIES, json={"name": f"team-{index:02d}", "policy": text}, headers=admin)
        assert saved.status_code == 201, (index, saved.text)
    (plain,) = _executions(api, app_pool, tenant, {"team": "web"})
    (frozen,) = _executions(api, app_pool, tenant, {"team": "t49"})
    reader = api.headers(tenant, READER)
    assert api.client.get(f"{EXECUTIONS}/{plain}", headers=reader).status_code == 200
    assert problem(api.client.get(f"{EXECUTIONS}/{frozen}", headers=reader), 403)["reason"] == (
        "denied_by_tenant_policy"
    )


def test_a_stored_policy_that_cannot_be_parsed_is_named_when_another_is_added(api: ApiHarness) -> None:  # noqa: F811
    tenant = provision(api, "cost-garbage")
    admin = api.headers(tenant, ADMIN)
    tenant_id = api.tenants[tenant].id
    with tenant_transaction(tenant_id) as conn:  # written behind the API
        row = conn.execute(
            "INSERT INTO app.tenant_policies (tenant_id, name, description, policy, created_by)"
            " VALUES (%s, 'garbage', '', 'this is not cedar', 'seed') RETURNING id",
            (tenant_id,),
        ).fetchone()
    assert row is not None
    body = {"name": "no-s", "policy": NO_STAGING}
    refused = problem(api.client.post(POLICIES, json=body, headers=admin), 409)
    assert refused["type"].endswith("/stored-policy-unreadable"), refused
    assert "'garbage' cannot be parsed" in refused["detail"] and "delete it first" in refused["detail"], refused
    assert "expression nodes" not in refused["detail"], refused
    assert refused["policy_id"] == str(row["id"]) and refused["name"] == "garbage"
    assert [item["name"] for item in api.client.get(POLICIES, headers=admin).json()["items"]] == ["garbage"]
    assert api.client.delete(f"{POLICIES}/{row['id']}", headers=admin).status_code == 204
    saved = api.client.post(POLICIES, json=body, headers=admin)
    assert saved.status_code == 201, saved.text


def _like_forbid(index: int) -> str:
    """The review's: 31 `like` clauses over the target, a repetitive pattern backtracking at each of its positions."""
    clause = ' unless { resource.target like "*ttttttttttttttttttttttttttttttx" }'
    head = 'forbid (principal, action == QP::Action::"intent.create", resource)'
    return f'{head} when {{ resource != QP::Intent::"x{index}" }}{clause * 31};'


def test_long_constructor_literals_and_costly_likes_are_refused_on_save(api: ApiHarness) -> None:  # noqa: F811
    tenant = provision(api, "cost-parsing")
    admin = api.headers(tenant, ADMIN)
    zeros = "0" * 240
    text = (
        'forbid (principal, action == QP::Action::"execution.read", resource) '
        f'when {{ duration("{zeros}1ms") > duration("{zeros}2ms") || true }};'
    )
    refused = problem(api.client.post(POLICIES, json={"name": "duration", "policy": text}, headers=admin), 422)
    assert refused["type"].endswith("invalid-policy"), refused
    assert "`duration` literal is at most 48 characters" in refused["errors"][0]["detail"], refused
    # Each `like` counts what its backtracking costs: two policies of 31 fit, a third is past the budget (before,
    # 31,976 characters of them fit at 2,102 nodes).
    for index in range(2):
        saved = api.client.post(POLICIES, json={"name": f"like-{index}", "policy": _like_forbid(index)}, headers=admin)
        assert saved.status_code == 201, saved.text
    third = api.client.post(POLICIES, json={"name": "like-2", "policy": _like_forbid(2)}, headers=admin)
    assert f"at most {MAX_TENANT_POLICY_COST} expression nodes" in problem(third, 422)["errors"][0]["detail"]


def test_fifty_honest_like_forbids_are_saved(api: ApiHarness) -> None:  # noqa: F811
    tenant = provision(api, "cost-honest-like")
    admin = api.headers(tenant, ADMIN)
    for index in range(tenant_policies.MAX_TENANT_POLICIES):
        text = (
            'forbid (principal, action == QP::Action::"intent.create", resource) '
            f'when {{ resource.target like "prod-{index}-*" }};'
        )
        saved = api.client.post(POLICIES, json={"name": f"prod-{index:02d}", "policy": text}, headers=admin)
        assert saved.status_code == 201, (index, saved.text)


def test_the_create_documents_each_of_its_conflicts(api: ApiHarness) -> None:  # noqa: F811
    documented = api.client.app.openapi()["paths"][POLICIES]["post"]["responses"]["409"]["description"]  # type: ignore[attr-defined]
    for slug in ["conflict", "policy-quota", "stored-policy-unreadable"]:
        assert f"`{slug}`" in documented, documented
