# intent_ref: platform.registry
"""A declaration's new version and its blueprint's archive take turns: the version is written against an active
blueprint or refused, never committed against one archived in between; a repeat archive honours If-Match.

Each race holds a real archive transaction open (the registry's own functions, its row lock taken and the status
written) while the new version is requested on another connection, until that request is blocked on the archive or
done; then the archive commits. Without a lock on the blueprint, the rollback or PUT read it as active and
committed a new version pinning a blueprint archived by then."""

from __future__ import annotations

import copy
import threading
from typing import Any
from uuid import UUID

import pytest

from shared.registry import service
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import (
    ADMIN,
    AUTHOR,
    BLUEPRINTS,
    INTENTS,
    READER,
    SEED_BLUEPRINT,
    create,
    etag_of,
    intent_body,
    outbox,
    problem,
    provision,
    put,
    registry_tables,
    wait_step,
)
from tests.integration.test_registry_cycle_lock_concurrent import versions, while_held
from tests.unit.test_registry_model import SEED_DECLARATION

pytestmark = pytest.mark.integration


def _while_archiving(api: ApiHarness, tenant: str, blueprint: str, request: Any) -> Any:
    """`request()`'s response, sent while an archive of `blueprint` is written but not committed; the archive
    commits once the request waits for it (or is done)."""

    def archive(conn: Any) -> None:
        _, changed = service.archive(conn, "blueprint", UUID(blueprint), if_match=None)
        assert changed

    answer, _ = while_held(api, tenant, archive, request)
    return answer


def _declared(api: ApiHarness, tenant: str) -> tuple[str, str]:
    """A blueprint and a declaration of it at version 2 (its version 1 pins the blueprint, 2 is plain steps)."""
    blueprint = create(api, tenant, copy.deepcopy(SEED_BLUEPRINT), BLUEPRINTS)["id"]
    declaration = create(api, tenant, copy.deepcopy(SEED_DECLARATION))["id"]
    assert put(api, tenant, declaration, intent_body(SEED_DECLARATION["name"], wait_step("x"))).status_code == 200
    return blueprint, declaration


def test_a_rollback_racing_the_archive_of_its_blueprint_is_refused(api: ApiHarness) -> None:
    tenant = provision(api, "race-rollback")
    blueprint, declaration = _declared(api, tenant)
    headers = api.headers(tenant, AUTHOR)

    def rollback() -> Any:
        return api.client.post(f"{INTENTS}/{declaration}/rollback", json={"to_version": 1}, headers=headers)

    rolled = _while_archiving(api, tenant, blueprint, rollback)
    errors = problem(rolled, 422)["errors"]
    assert [(error["pointer"], error["code"]) for error in errors] == [("/definition", "blueprint_archived")]
    assert versions(api, tenant, declaration) == [1, 2]


def test_a_put_racing_the_archive_of_its_blueprint_is_refused(api: ApiHarness) -> None:
    tenant = provision(api, "race-put")
    blueprint, declaration = _declared(api, tenant)
    headers = {**api.headers(tenant, AUTHOR), "If-Match": etag_of(api, tenant, declaration)}

    def update() -> Any:
        return api.client.put(f"{INTENTS}/{declaration}", json=copy.deepcopy(SEED_DECLARATION), headers=headers)

    updated = _while_archiving(api, tenant, blueprint, update)
    errors = problem(updated, 422)["errors"]
    assert [error["code"] for error in errors] == ["blueprint_required"]
    assert versions(api, tenant, declaration) == [1, 2]


def test_a_create_racing_the_archive_of_its_blueprint_is_refused(api: ApiHarness) -> None:
    tenant = provision(api, "race-create")
    blueprint = create(api, tenant, copy.deepcopy(SEED_BLUEPRINT), BLUEPRINTS)["id"]
    headers = api.headers(tenant, AUTHOR)

    def declare() -> Any:
        return api.client.post(INTENTS, json=copy.deepcopy(SEED_DECLARATION), headers=headers)

    created = _while_archiving(api, tenant, blueprint, declare)
    assert [error["code"] for error in problem(created, 422)["errors"]] == ["blueprint_required"]


# ---- a repeat archive honours If-Match -------------------------------------------------------------------------


def test_a_repeat_archive_with_a_stale_etag_is_412_and_with_none_the_current_or_the_archiving_one_200(
    api: ApiHarness,
) -> None:
    """The ETag the archive was made with (its version's active one) answers a repeat of that request as done: a
    client that lost the first answer and sends it again was refused 412 for a change that had succeeded."""
    tenant = provision(api, "rearchive")
    item = create(api, tenant, intent_body("rearchive"))["id"]
    first = etag_of(api, tenant, item)
    assert put(api, tenant, item, intent_body("rearchive", wait_step("two"))).status_code == 200
    second = etag_of(api, tenant, item)
    author = api.headers(tenant, AUTHOR)
    archived = api.client.delete(f"{INTENTS}/{item}", headers={**author, "If-Match": second})
    assert archived.status_code == 200 and archived.headers["etag"] == f'"{item}.v2.archived"'
    before = registry_tables(api)
    for stale in (first, f'"{item}.v1.archived"', f'{first}, "{item}.v1.archived"'):
        refused = api.client.delete(f"{INTENTS}/{item}", headers={**author, "If-Match": stale})
        assert problem(refused, 412)["title"] == "Precondition failed"
    current = archived.headers["etag"]
    for fresh in (
        {},
        {"If-Match": "*"},
        {"If-Match": current},
        {"If-Match": f"{first}, {current}"},
        {"If-Match": second},
        {"If-Match": f"{first}, {second}"},
    ):
        again = api.client.delete(f"{INTENTS}/{item}", headers={**author, **fresh})
        assert again.status_code == 200 and again.headers["etag"] == archived.headers["etag"], fresh
        assert again.json()["status"] == "archived"
    assert registry_tables(api) == before


# ---- an archive is decided on the version it archives -----------------------------------------------------------


def _protect(kind: str) -> str:
    """A tenant policy: nothing labelled protected=yes is archived (`kind`'s archive)."""
    return (
        f'forbid (principal, action == QP::Action::"{kind}.archive", resource) '
        'when { resource.labels.contains("protected=yes") };'
    )


@pytest.mark.parametrize(("kind", "path"), [("intent", INTENTS), ("blueprint", BLUEPRINTS)])
def test_an_archive_is_decided_on_the_version_it_archives(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, kind: str, path: str
) -> None:
    """An update that labels the item protected commits between the archive's first read of it and its row lock: the
    archive is decided on the version it would archive (refused, 403), not on the one it read before (allowed). It
    was decided on the one read first, and archived the protected version."""
    tenant = provision(api, f"archive-{kind}-decided")
    body = {"name": f"prot-{kind}", "definition": {"steps": [wait_step("a")]}}
    if kind == "intent":
        body["definition"]["target"] = "staging"
    policy = {"name": "keep-protected", "policy": _protect(kind)}
    assert api.client.post("/api/v1/policies", json=policy, headers=api.headers(tenant, ADMIN)).status_code == 201
    item = create(api, tenant, body, path)["id"]
    author = api.headers(tenant, AUTHOR)
    labelled = {**copy.deepcopy(body), "labels": {"protected": "yes"}}
    archive = service.archive
    updates: list[Any] = []

    def labelled_first(conn: Any, *args: Any, **kwargs: Any) -> Any:
        """The archive, once an update labelling the item protected (sent with version 1's ETag) has committed."""
        if not updates:  # sent from a thread of its own: this request's connection is not the update's
            headers = {**author, "If-Match": f'"{item}.v1"'}
            sender = threading.Thread(
                target=lambda: updates.append(api.client.put(f"{path}/{item}", json=labelled, headers=headers))
            )
            sender.start()
            sender.join(60)
        return archive(conn, *args, **kwargs)

    monkeypatch.setattr(service, "archive", labelled_first)
    refused = api.client.delete(f"{path}/{item}", headers=author)
    monkeypatch.undo()
    assert len(updates) == 1 and updates[0].status_code == 200, updates
    assert problem(refused, 403)["reason"]
    current = api.client.get(f"{path}/{item}", headers=api.headers(tenant, READER))
    assert current.status_code == 200, current.text
    assert (current.json()["status"], current.json()["version"]) == ("active", 2)
    assert current.json()["labels"] == {"protected": "yes"}
    assert f"{kind}.archived" not in [event["event_type"] for event in outbox(api, tenant)]
    request = refused.headers["x-request-id"]
    decided = [
        (row["decision"], row["detail"].get("version"))
        for row in api.audit_rows(tenant)
        if row["request_id"] == request and row["action"] == f"{kind}.archive"
    ]
    assert decided == [("deny", 2)]
