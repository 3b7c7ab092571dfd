# intent_ref: platform.registry
"""The registry's listings honour a tenant's read forbids: an item a policy forbids the caller to read is left out of
`GET /intents` and `GET /blueprints` (as `GET /{id}` refuses it), one audit record per outcome."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import (
    ADMIN,
    AUTHOR,
    BLUEPRINTS,
    INTENTS,
    READER,
    create,
    intent_body,
    problem,
    provision,
    wait_step,
)

pytestmark = pytest.mark.integration

SECRET_FORBID = (
    'forbid (principal, action in [QP::Action::"intent.read", QP::Action::"blueprint.read"], resource) '
    'when { resource.labels.contains("secret=yes") } unless { principal.roles.contains("Intent.Author") };'
)
"""Readers may not read intents or blueprints labelled secret; authors may."""


def _forbid(api: ApiHarness, tenant: str, name: str, policy: str) -> None:
    body = {"name": name, "policy": policy}
    response = api.client.post("/api/v1/policies", json=body, headers=api.headers(tenant, ADMIN))
    assert response.status_code == 201, response.text


def _names(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["name"] for item in response.json()["items"]]


def _list_decisions(api: ApiHarness, tenant: str, request_id: str) -> list[dict[str, Any]]:
    return [
        row
        for row in api.audit_rows(tenant)
        if row["request_id"] == request_id and row["detail"].get("operation") == "list"
    ]


def _blueprint(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields, "definition": {"steps": [wait_step("only")]}}


def test_a_listing_leaves_out_what_a_tenant_forbids_reading(api: ApiHarness) -> None:
    tenant = provision(api, "list-secret")
    _forbid(api, tenant, "hide-secret", SECRET_FORBID)
    for path, body in ((INTENTS, intent_body), (BLUEPRINTS, _blueprint)):
        create(api, tenant, body("alpha"), path)
        secret = create(api, tenant, body("bravo", labels={"secret": "yes"}, description="top secret"), path)
        create(api, tenant, body("charlie", labels={"team": "web"}), path)
        reader, author = api.headers(tenant, READER), api.headers(tenant, AUTHOR)
        problem(api.client.get(f"{path}/{secret['id']}", headers=reader), 403)
        assert _names(api.client.get(path, headers=reader)) == ["alpha", "charlie"]
        assert _names(api.client.get(path, params={"label": "secret:yes"}, headers=reader)) == []
        # Whoever the forbid does not cover lists them all.
        assert _names(api.client.get(path, headers=author)) == ["alpha", "bravo", "charlie"]


def test_an_item_that_became_secret_leaves_the_listing_and_one_that_stopped_returns(api: ApiHarness) -> None:
    tenant = provision(api, "list-current")
    _forbid(api, tenant, "hide-secret", SECRET_FORBID)
    public = create(api, tenant, intent_body("public"))["id"]
    secret = create(api, tenant, intent_body("secret", labels={"secret": "yes"}))["id"]
    author = api.headers(tenant, AUTHOR)
    for item, name, labels in ((public, "public", {"secret": "yes"}), (secret, "secret", {})):
        body = intent_body(name, wait_step("v2"), labels=labels)
        response = api.client.put(f"{INTENTS}/{item}", json=body, headers={**author, "If-Match": f'"{item}.v1"'})
        assert response.status_code == 200, response.text
    assert _names(api.client.get(INTENTS, headers=api.headers(tenant, READER))) == ["secret"]


def test_a_forbid_on_the_production_target_leaves_its_intents_out(api: ApiHarness) -> None:
    tenant = provision(api, "list-target")
    policy = (
        'forbid (principal, action == QP::Action::"intent.read", resource) when { resource.target == "production" };'
    )
    _forbid(api, tenant, "hide-production", policy)
    create(api, tenant, intent_body("prod", target="production"))
    create(api, tenant, intent_body("stage", target="staging"))
    assert _names(api.client.get(INTENTS, headers=api.headers(tenant, READER))) == ["stage"]


def test_a_forbid_naming_one_item_leaves_out_that_item_alone(api: ApiHarness) -> None:
    """Two items of one content: a forbid naming the second by id refuses it and not the first (a decision on the
    page's first item of that content alone would have shown both)."""
    tenant = provision(api, "list-by-id")
    create(api, tenant, intent_body("first", labels={"team": "web"}))
    second = create(api, tenant, intent_body("second", labels={"team": "web"}))["id"]
    policy = f'forbid (principal, action == QP::Action::"intent.read", resource == QP::Intent::"{second}");'
    _forbid(api, tenant, "hide-second", policy)
    assert _names(api.client.get(INTENTS, headers=api.headers(tenant, READER))) == ["first"]


def test_a_page_decides_each_distinct_content_once(api: ApiHarness) -> None:
    tenant = provision(api, "list-decisions")
    _forbid(api, tenant, "hide-secret", SECRET_FORBID)
    label_sets: list[dict[str, str]] = [{}, {"secret": "yes"}, {"team": "web"}]
    for number in range(12):  # i00..i11, the three label sets in turn
        create(api, tenant, intent_body(f"i{number:02}", labels=label_sets[number % 3]))
    reader = api.headers(tenant, READER)
    listed = api.client.get(INTENTS, params={"limit": 9}, headers=reader)
    assert _names(listed) == [f"i{number:02}" for number in range(9) if number % 3 != 1]
    assert listed.json()["next_cursor"] is not None  # six items of a nine-item page, and more to come
    decisions = _list_decisions(api, tenant, listed.headers["x-request-id"])
    # One record per outcome, naming its items: six allowed (two label sets), three refused.
    assert sorted((row["action"], row["decision"], len(row["detail"]["items"])) for row in decisions) == [
        ("intent.read", "allow", 6),
        ("intent.read", "deny", 3),
    ]
    rest = api.client.get(INTENTS, params={"cursor": listed.json()["next_cursor"]}, headers=reader)
    assert _names(rest) == ["i09", "i11"] and rest.json()["next_cursor"] is None


def test_a_listing_of_items_with_distinct_labels_writes_one_record_per_outcome(api: ApiHarness) -> None:
    # A record per content wrote one per item: a tenant without a policy grew its trail by 200 rows a listing.
    tenant = provision(api, "list-distinct")
    for number in range(40):
        create(api, tenant, intent_body(f"d{number:02}", labels={"n": str(number)}))
    listed = api.client.get(INTENTS, params={"limit": 200}, headers=api.headers(tenant, READER))
    assert len(_names(listed)) == 40
    decisions = _list_decisions(api, tenant, listed.headers["x-request-id"])
    assert [(row["action"], row["decision"], len(row["detail"]["items"])) for row in decisions] == [
        ("intent.read", "allow", 40)
    ]


def test_an_empty_page_keeps_its_one_decision_on_the_tenant(api: ApiHarness) -> None:
    tenant = provision(api, "list-empty")
    _forbid(api, tenant, "hide-secret", SECRET_FORBID)
    listed = api.client.get(INTENTS, params={"name_prefix": "none"}, headers=api.headers(tenant, READER))
    assert _names(listed) == []
    request_id = listed.headers["x-request-id"]
    decisions = [row for row in api.audit_rows(tenant) if row["request_id"] == request_id]
    assert [(row["action"], row["resource_type"], row["decision"]) for row in decisions] == [
        ("intent.list", "Tenant", "allow")
    ]
