# intent_ref: platform.registry
"""The registry's contract at its edges: name length against the table, reads of old versions under tenant forbids,
rollback onto an archived blueprint, the ETag of an archived item, cursors of another list, declared headers."""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import TypeAdapter, ValidationError

from shared.registry.model import Slug
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import (
    ADMIN,
    AUTHOR,
    BLUEPRINTS,
    DEPLOYER,
    INTENTS,
    READER,
    SEED_BLUEPRINT,
    create,
    etag_of,
    intent_body,
    problem,
    provision,
    put,
    registry_tables,
    wait_step,
)
from tests.unit.test_registry_model import SEED_DECLARATION

pytestmark = pytest.mark.integration

NAME_63, NAME_64 = "n" * 63, "n" * 64
SECRET_FORBID = (
    'forbid (principal, action in [QP::Action::"intent.read"], resource) '
    'when { resource.labels.contains("secret=yes") } unless { principal.roles.contains("Intent.Author") };'
)
"""Readers may not read what is labelled secret; authors may (so the tests can tell the forbid's reach)."""


def cursor_of(position: dict[str, Any]) -> str:
    """A cursor as the API encodes one (URL-safe base64 of JSON, unpadded)."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def pointers(response: Any) -> list[str]:
    return [error["pointer"] for error in problem(response, 422)["errors"]]


# ---- 1. names: 63 characters, as the table stores ------------------------------------------------------------


def test_a_name_of_64_characters_is_refused_everywhere_and_63_accepted(api: ApiHarness) -> None:
    tenant = provision(api, "names")
    headers = api.headers(tenant, AUTHOR)
    assert api.client.post(f"{INTENTS}/validate", json=intent_body(NAME_63), headers=headers).status_code == 200
    assert pointers(api.client.post(f"{INTENTS}/validate", json=intent_body(NAME_64), headers=headers)) == ["/name"]
    before = registry_tables(api)
    assert pointers(api.client.post(INTENTS, json=intent_body(NAME_64), headers=headers)) == ["/name"]
    blueprint = {"name": NAME_64, "definition": {"steps": [wait_step("a")]}}
    assert pointers(api.client.post(BLUEPRINTS, json=blueprint, headers=headers)) == ["/name"]
    assert registry_tables(api) == before
    assert create(api, tenant, intent_body(NAME_63))["name"] == NAME_63
    assert create(api, tenant, {**blueprint, "name": NAME_63}, BLUEPRINTS)["name"] == NAME_63
    # The same slug names a declaration's blueprint and an intent.run step's intent.
    declaration = {"name": "decl", "definition": {"blueprint": NAME_64}}
    assert "/definition/blueprint" in pointers(
        api.client.post(f"{INTENTS}/validate", json=declaration, headers=headers)
    )
    runs = intent_body("runs", {"id": "child", "action": "intent.run", "intent": NAME_64})
    assert any(at.endswith("/intent") for at in pointers(api.client.post(INTENTS, json=runs, headers=headers)))


def test_the_published_schema_stops_names_at_63_characters(api: ApiHarness) -> None:
    tenant = provision(api, "schema-names")
    schema = api.client.get("/api/v1/schemas/intent", headers=api.headers(tenant, READER)).json()
    pattern = schema["properties"]["name"]["pattern"]
    assert re.search(pattern, NAME_63) and not re.search(pattern, NAME_64)


def test_the_model_slug_and_the_table_check_agree(api: ApiHarness) -> None:
    """Every name the model takes, the table stores; the length the model refuses, the table refuses too (as a
    registry error, which the API answers 422, never as a raw CheckViolation, which it answered 500)."""
    from shared.db.session import tenant_transaction
    from shared.registry.repository import ValueRefusedError, insert_head

    api.provision("slug-table")
    tenant_id = api.tenants["slug-table"].id
    slug = TypeAdapter(Slug)
    accepted = ["a", "0", "a-b", NAME_63, "a" + "-" * 61 + "z", "9" * 63]
    for name in accepted:
        slug.validate_python(name)
    for name in (NAME_64, "n" * 65):
        with pytest.raises(ValidationError):
            slug.validate_python(name)

    class Undo(Exception):
        """Rolls the test's rows back."""

    with pytest.raises(Undo), tenant_transaction(tenant_id) as conn:
        for name in accepted:
            assert insert_head(conn, "intent", uuid4(), name, "", {}, "test").name == name
        for name in (NAME_64, "n" * 65):
            with pytest.raises(ValueRefusedError) as refused:
                insert_head(conn, "intent", uuid4(), name, "", {}, "test")
            assert refused.value.constraint == "intents_name_check"
        raise Undo


def test_a_value_the_table_refuses_is_422_not_500(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the model and a migration to disagree again, the table's CHECK answers 422 at the field it guards."""
    from shared.registry import repository, service

    tenant = provision(api, "check-422")

    def insert_too_long(conn: Any, kind: Any, item_id: UUID, name: str, *args: Any) -> Any:
        return repository.insert_head(conn, kind, item_id, NAME_64, *args)  # the real table's CHECK refuses it

    monkeypatch.setattr(service, "insert_head", insert_too_long)
    before = registry_tables(api)
    response = api.client.post(INTENTS, json=intent_body("fine"), headers=api.headers(tenant, AUTHOR))
    assert problem(response, 422)["errors"][0] == {
        "pointer": "/name",
        "detail": "the value cannot be stored (it breaks a constraint of the registry)",
        "code": "not_storable",
    }
    assert registry_tables(api) == before


# ---- 2. a version is read as what it holds -------------------------------------------------------------------


def _forbid_secret(api: ApiHarness, tenant: str) -> None:
    body = {"name": "hide-secret", "policy": SECRET_FORBID}
    assert api.client.post("/api/v1/policies", json=body, headers=api.headers(tenant, ADMIN)).status_code == 201


def test_an_old_version_is_decided_on_its_own_labels(api: ApiHarness) -> None:
    tenant = provision(api, "old-secret")
    _forbid_secret(api, tenant)
    secret = intent_body("old-secret", wait_step("classified"), labels={"secret": "yes"}, description="top secret")
    item = create(api, tenant, secret)["id"]
    assert (
        put(api, tenant, item, intent_body("old-secret", wait_step("public")), etag=f'"{item}.v1"').status_code == 200
    )
    reader = api.headers(tenant, READER)
    assert api.client.get(f"{INTENTS}/{item}", headers=reader).status_code == 200
    assert problem(api.client.get(f"{INTENTS}/{item}/versions/1", headers=reader), 403)["reason"] == (
        "denied_by_tenant_policy"
    )
    assert api.client.get(f"{INTENTS}/{item}/versions/2", headers=reader).json()["labels"] == {}
    problem(api.client.get(f"{INTENTS}/{item}/diff", params={"from": 1, "to": 2}, headers=reader), 403)
    problem(api.client.get(f"{INTENTS}/{item}/diff", params={"from": 2, "to": 1}, headers=reader), 403)
    assert api.client.get(f"{INTENTS}/{item}/diff", params={"from": 2, "to": 2}, headers=reader).status_code == 200
    listed = api.client.get(f"{INTENTS}/{item}/versions", headers=reader)
    assert listed.status_code == 200
    assert [version["version"] for version in listed.json()["items"]] == [2]
    # Whoever the forbid does not cover reads them all.
    author = api.headers(tenant, AUTHOR)
    assert api.client.get(f"{INTENTS}/{item}/versions/1", headers=author).json()["description"] == "top secret"
    assert api.client.get(f"{INTENTS}/{item}/diff", params={"from": 1, "to": 2}, headers=author).status_code == 200


def test_an_old_version_stays_readable_when_the_current_one_is_forbidden(api: ApiHarness) -> None:
    tenant = provision(api, "new-secret")
    _forbid_secret(api, tenant)
    item = create(api, tenant, intent_body("new-secret", wait_step("public")))["id"]
    secret = intent_body("new-secret", wait_step("classified"), labels={"secret": "yes"})
    assert put(api, tenant, item, secret, etag=f'"{item}.v1"').status_code == 200
    reader = api.headers(tenant, READER)
    problem(api.client.get(f"{INTENTS}/{item}", headers=reader), 403)
    assert api.client.get(f"{INTENTS}/{item}/versions/1", headers=reader).json()["version"] == 1
    problem(api.client.get(f"{INTENTS}/{item}/versions/2", headers=reader), 403)
    listed = api.client.get(f"{INTENTS}/{item}/versions", headers=reader).json()
    assert [version["version"] for version in listed["items"]] == [1]
    # A version the item lacks is decided on the current one first: a caller refused the item learns nothing more.
    problem(api.client.get(f"{INTENTS}/{item}/versions/9", headers=reader), 403)
    problem(api.client.get(f"{INTENTS}/{item}/diff", params={"from": 1, "to": 9}, headers=reader), 403)
    assert api.client.get(f"{INTENTS}/{item}/versions/9", headers=api.headers(tenant, AUTHOR)).status_code == 404


def test_a_versions_page_decides_each_distinct_content_once(api: ApiHarness) -> None:
    tenant = provision(api, "page-decisions")
    _forbid_secret(api, tenant)
    item = create(api, tenant, intent_body("page-decisions", wait_step("s0")))["id"]
    for number in range(1, 8):  # versions 2..8, alternating public and secret labels
        labels = {"secret": "yes"} if number % 2 else {}
        body = intent_body("page-decisions", wait_step(f"s{number}"), labels=labels)
        assert put(api, tenant, item, body, etag=f'"{item}.v{number}"').status_code == 200
    listed = api.client.get(f"{INTENTS}/{item}/versions", params={"limit": 6}, headers=api.headers(tenant, READER))
    assert [version["version"] for version in listed.json()["items"]] == [1, 3, 5]
    request_id = listed.headers["x-request-id"]
    decisions = [
        row
        for row in api.audit_rows(tenant)
        if row["request_id"] == request_id and row["detail"].get("operation") == "list_versions"
    ]
    assert sorted((row["decision"], row["detail"]["versions"]) for row in decisions) == [
        ("allow", [1, 3, 5]),
        ("deny", [2, 4, 6]),
    ]
    rest = api.client.get(
        f"{INTENTS}/{item}/versions",
        params={"cursor": listed.json()["next_cursor"]},
        headers=api.headers(tenant, READER),
    )
    assert [version["version"] for version in rest.json()["items"]] == [7] and rest.json()["next_cursor"] is None


# ---- 3. a rollback makes no new version on an archived blueprint --------------------------------------------


def test_a_rollback_onto_an_archived_blueprint_is_refused(api: ApiHarness) -> None:
    tenant = provision(api, "pin-archived")
    blueprint = create(api, tenant, copy.deepcopy(SEED_BLUEPRINT), BLUEPRINTS)
    declaration = create(api, tenant, copy.deepcopy(SEED_DECLARATION))["id"]
    assert api.client.post(f"{INTENTS}/{declaration}/plan", headers=api.headers(tenant, DEPLOYER)).status_code == 200
    assert put(api, tenant, declaration, intent_body(SEED_DECLARATION["name"], wait_step("x"))).status_code == 200
    archived = api.client.delete(f"{BLUEPRINTS}/{blueprint['id']}", headers=api.headers(tenant, AUTHOR))
    assert archived.status_code == 200
    assert "/definition" in pointers(put(api, tenant, declaration, copy.deepcopy(SEED_DECLARATION)))
    before = registry_tables(api)
    rolled = api.client.post(
        f"{INTENTS}/{declaration}/rollback", json={"to_version": 1}, headers=api.headers(tenant, AUTHOR)
    )
    errors = problem(rolled, 422)["errors"]
    assert [(error["pointer"], error["code"]) for error in errors] == [("/definition", "blueprint_archived")]
    assert registry_tables(api) == before
    # Version 1 itself still reads its archived pin: its stored document and the version it pinned are kept.
    kept = api.client.get(f"{INTENTS}/{declaration}/versions/1", headers=api.headers(tenant, READER)).json()
    assert kept["blueprint_ref"]["id"] == blueprint["id"]


# ---- 4. the ETag changes with the status ---------------------------------------------------------------------


def test_archiving_changes_the_etag(api: ApiHarness) -> None:
    tenant = provision(api, "etag-archive")
    item = create(api, tenant, intent_body("etag-archive"))["id"]
    active = etag_of(api, tenant, item)
    assert active == f'"{item}.v1"'  # unchanged for an active item
    author = api.headers(tenant, AUTHOR)
    problem(api.client.delete(f"{INTENTS}/{item}", headers={**author, "If-Match": f'"{item}.v1.archived"'}), 412)
    archived = api.client.delete(f"{INTENTS}/{item}", headers={**author, "If-Match": active})
    assert archived.status_code == 200 and archived.headers["etag"] == f'"{item}.v1.archived"'
    assert etag_of(api, tenant, item) == archived.headers["etag"]
    again = api.client.delete(f"{INTENTS}/{item}", headers=author)
    assert again.status_code == 200 and again.headers["etag"] == archived.headers["etag"]
    problem(put(api, tenant, item, intent_body("etag-archive", wait_step("late")), etag=active), 409)
    problem(put(api, tenant, item, intent_body("etag-archive", wait_step("late")), etag=archived.headers["etag"]), 409)


# ---- 5. a cursor serves the list that issued it --------------------------------------------------------------


def test_a_cursor_of_another_list_is_refused(api: ApiHarness) -> None:
    tenant = provision(api, "cursors")
    reader = api.headers(tenant, READER)
    first = create(api, tenant, intent_body("cursor-a"))["id"]
    second = create(api, tenant, intent_body("cursor-b"))["id"]
    create(api, tenant, {"name": "cursor-bp", "definition": {"steps": [wait_step("a")]}}, BLUEPRINTS)
    create(api, tenant, {"name": "cursor-bq", "definition": {"steps": [wait_step("a")]}}, BLUEPRINTS)
    for number in range(2):
        assert put(api, tenant, first, intent_body("cursor-a", wait_step(f"v{number}"))).status_code == 200
    intents_cursor = api.client.get(INTENTS, params={"limit": 1}, headers=reader).json()["next_cursor"]
    blueprints_cursor = api.client.get(BLUEPRINTS, params={"limit": 1}, headers=reader).json()["next_cursor"]
    versions_cursor = api.client.get(f"{INTENTS}/{first}/versions", params={"limit": 1}, headers=reader).json()[
        "next_cursor"
    ]
    assert intents_cursor and blueprints_cursor and versions_cursor
    # Each works where it was issued...
    assert [
        i["name"] for i in api.client.get(INTENTS, params={"cursor": intents_cursor}, headers=reader).json()["items"]
    ] == ["cursor-b"]
    assert api.client.get(BLUEPRINTS, params={"cursor": blueprints_cursor}, headers=reader).status_code == 200
    page = api.client.get(f"{INTENTS}/{first}/versions", params={"cursor": versions_cursor}, headers=reader).json()
    assert [version["version"] for version in page["items"]] == [2, 3]
    # ...and nowhere else: another list's, another item's, or one without its position is 400, not page 1.
    for path, cursor in [
        (INTENTS, versions_cursor),
        (INTENTS, blueprints_cursor),
        (BLUEPRINTS, intents_cursor),
        (f"{INTENTS}/{first}/versions", intents_cursor),
        (f"{INTENTS}/{second}/versions", versions_cursor),
        (INTENTS, cursor_of({"version": 1})),
        (f"{INTENTS}/{first}/versions", cursor_of({"name": "zzz"})),
        (INTENTS, cursor_of({"list": "intents"})),
    ]:
        assert problem(api.client.get(path, params={"cursor": cursor}, headers=reader), 400)["type"].endswith(
            "invalid-cursor"
        ), (path, cursor)


def test_a_cursor_issued_before_lists_marked_theirs_still_pages_its_list(api: ApiHarness) -> None:
    tenant = provision(api, "old-cursors")
    reader = api.headers(tenant, READER)
    item = create(api, tenant, intent_body("old-a"))["id"]
    create(api, tenant, intent_body("old-b"))
    assert put(api, tenant, item, intent_body("old-a", wait_step("v2"))).status_code == 200
    names = api.client.get(INTENTS, params={"cursor": cursor_of({"name": "old-a"})}, headers=reader).json()
    assert [head["name"] for head in names["items"]] == ["old-b"]
    versions = api.client.get(
        f"{INTENTS}/{item}/versions", params={"cursor": cursor_of({"version": 1})}, headers=reader
    ).json()
    assert [version["version"] for version in versions["items"]] == [2]


# ---- 6. the headers are declared -----------------------------------------------------------------------------


def test_the_registry_routes_declare_their_etag_and_location_headers() -> None:
    from tools.export_openapi import render_openapi

    paths = json.loads(render_openapi())["paths"]
    for base in (INTENTS, BLUEPRINTS):
        created = paths[base]["post"]["responses"]["201"]
        assert {"ETag", "Location"} <= set(created.get("headers", {})), base
        assert "content" in created  # the body is still documented beside the headers
        for path, method in [
            (f"{base}/{{item_id}}", "get"),
            (f"{base}/{{item_id}}", "put"),
            (f"{base}/{{item_id}}", "delete"),
            (f"{base}/{{item_id}}/rollback", "post"),
        ]:
            assert "ETag" in paths[path][method]["responses"]["200"].get("headers", {}), (method, path)
