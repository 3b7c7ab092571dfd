# intent_ref: platform.tenants
"""ETags of the tenant's settings and its webhook subscriptions (ADR 0045): a change that changes nothing keeps the
ETag and `updated_at`; a request sent with If-Match whose subscription is deleted while it runs is 412 (without
If-Match, as before); `enabled: true` sent to an enabled subscription locks none of its deliveries."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import psycopg
import pytest

from shared.db.session import tenant_transaction
from shared.events import webhook_store
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_etag_settings_webhooks import _snapshot, _stale, _subscribe, _while_held
from tests.integration.test_webhooks import emit, local, tenant  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration

ADMIN = ["Tenant.Admin"]
TENANT = "/api/v1/tenant"
HOOKS = "/api/v1/webhooks"
_LOCK_NOWAIT = "SELECT id FROM app.webhook_deliveries WHERE subscription_id = %s ORDER BY id FOR UPDATE NOWAIT"


def _settings(api: ApiHarness, name: str, settings: dict[str, Any], if_match: str | None = None) -> Any:
    headers = api.headers(name, ADMIN) | ({"If-Match": if_match} if if_match is not None else {})
    response = api.client.patch(TENANT, json={"settings": settings}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def _held_delete(subscription_id: str) -> Any:
    """What a delete of the subscription holds, not yet committed: its deliveries and its row."""

    def hold(conn: Any) -> None:
        assert webhook_store.delete(conn, uuid.UUID(subscription_id))

    return hold


def _deliveries_free(api: ApiHarness, subscription_id: str) -> bool:
    """Whether another transaction could lock all the subscription's deliveries at once (none is locked)."""
    with psycopg.connect(api.admin_url, dbname="quantum") as other:
        try:
            rows = other.execute(_LOCK_NOWAIT, (subscription_id,)).fetchall()
        except psycopg.errors.LockNotAvailable:
            return False
        assert rows, "deliveries to lock"
        return True


# --- a change that changes nothing ------------------------------------------------------------------------------


def test_a_settings_change_that_changes_nothing_keeps_the_etag_and_updated_at(api: ApiHarness) -> None:
    handle = api.provision("etag-noop-settings")
    first = _settings(api, "etag-noop-settings", {"feature.x": 1, "allowed_hosts": ["api.example.com"]})
    before = _snapshot(api, "tenants", handle.id)

    again = _settings(api, "etag-noop-settings", {"feature.x": 1}, first.headers["ETag"])
    assert again.headers["ETag"] == first.headers["ETag"]
    reordered = _settings(api, "etag-noop-settings", {"allowed_hosts": ["api.example.com"], "feature.x": 1})
    assert reordered.headers["ETag"] == first.headers["ETag"]
    assert _snapshot(api, "tenants", handle.id) == before  # updated_at and version too

    # What is shown changes, so does the ETag: another value, or the same number written otherwise.
    moved = _settings(api, "etag-noop-settings", {"feature.x": 1.0}, first.headers["ETag"])
    assert moved.json()["settings"]["feature.x"] == 1.0 and moved.headers["ETag"] != first.headers["ETag"]
    _stale(
        api.client.patch(
            TENANT,
            json={"settings": {"feature.x": 1.0}},
            headers=api.headers("etag-noop-settings", ADMIN) | {"If-Match": first.headers["ETag"]},
        )
    )


def test_a_subscription_change_that_changes_nothing_keeps_the_etag_and_updated_at(api: ApiHarness, local: None) -> None:
    handle, headers = tenant(api, "etag-noop-hooks")
    subscription_id, etag = _subscribe(api, headers)
    path = f"{HOOKS}/{subscription_id}"
    shown = api.client.get(path, headers=headers).json()
    before = _snapshot(api, "webhook_subscriptions", handle.id)

    for body in ({}, {"enabled": True}, {"description": shown["description"], "url": shown["url"]},
                 {"event_types": shown["event_types"]}):  # fmt: skip
        answer = api.client.patch(path, json=body, headers=headers | {"If-Match": etag})
        assert answer.status_code == 200, answer.text
        assert answer.headers["ETag"] == etag and answer.json()["updated_at"] == shown["updated_at"], body
    assert _snapshot(api, "webhook_subscriptions", handle.id) == before

    described = api.client.patch(path, json={"description": "moved"}, headers=headers | {"If-Match": etag})
    assert described.status_code == 200 and described.headers["ETag"] != etag, described.text
    assert described.json()["updated_at"] != shown["updated_at"]


# --- a subscription deleted while a request sent with If-Match runs ---------------------------------------------


def test_a_delete_sent_with_the_etag_of_a_subscription_deleted_meanwhile_is_412(api: ApiHarness, local: None) -> None:
    """The delete finds the subscription (the other delete is not committed), then waits for it: two deletes sent
    with one ETag were both 204."""
    handle, headers = tenant(api, "etag-gone-delete")
    subscription_id, etag = _subscribe(api, headers)
    emit(handle.id, "intent.created")
    path = f"{HOOKS}/{subscription_id}"
    answer = _while_held(
        api,
        handle.id,
        _held_delete(subscription_id),
        lambda: api.client.delete(path, headers=headers | {"If-Match": etag}),
    )
    _stale(answer)
    assert "deleted" in answer.json()["detail"]
    # `*` matches a subscription that exists, and so not one deleted meanwhile.
    starred_id, _ = _subscribe(api, headers)
    starred = _while_held(
        api,
        handle.id,
        _held_delete(starred_id),
        lambda: api.client.delete(f"{HOOKS}/{starred_id}", headers=headers | {"If-Match": "*"}),
    )
    _stale(starred)
    # Once it is gone, a delete is 404 with or without If-Match, as before: it names no subscription that exists.
    assert api.client.delete(path, headers=headers | {"If-Match": etag}).status_code == 404
    assert api.client.delete(path, headers=headers).status_code == 404

    # Without If-Match, a delete that waited for another is 204 as before.
    other_id, _ = _subscribe(api, headers)
    plain = _while_held(
        api, handle.id, _held_delete(other_id), lambda: api.client.delete(f"{HOOKS}/{other_id}", headers=headers)
    )
    assert plain.status_code == 204, plain.text


def _gone_meanwhile(
    api: ApiHarness, tenant_id: uuid.UUID, headers: dict[str, str], send: Any, if_match: str | None
) -> Any:
    """`send(path, extra headers)`'s answer for a new subscription deleted (not yet committed) as it is sent, with
    `if_match` (`etag`: the subscription's own) if any."""
    subscription_id, etag = _subscribe(api, headers)
    path = f"{HOOKS}/{subscription_id}"
    extra = {} if if_match is None else {"If-Match": etag if if_match == "etag" else if_match}
    return _while_held(api, tenant_id, _held_delete(subscription_id), lambda: send(path, extra))


def test_a_rotation_or_change_sent_with_the_etag_of_a_subscription_deleted_meanwhile_is_412(
    api: ApiHarness, local: None
) -> None:
    handle, headers = tenant(api, "etag-gone-rotate")

    def rotate(path: str, extra: dict[str, str]) -> Any:
        return api.client.post(f"{path}/rotate-secret", headers=headers | extra)

    def change(path: str, extra: dict[str, str]) -> Any:
        return api.client.patch(path, json={"description": "x"}, headers=headers | extra)

    for send in (rotate, change):
        _stale(_gone_meanwhile(api, handle.id, headers, send, if_match="etag"))
        _stale(_gone_meanwhile(api, handle.id, headers, send, if_match="*"))
        plain = _gone_meanwhile(api, handle.id, headers, send, if_match=None)
        assert plain.status_code == 404, plain.text  # without If-Match, as before


# --- `enabled: true` and the deliveries' locks ------------------------------------------------------------------


def test_enabling_an_enabled_subscription_locks_none_of_its_deliveries(api: ApiHarness, local: None) -> None:
    handle, headers = tenant(api, "etag-enable-locks")
    subscription_id, _ = _subscribe(api, headers)
    emit(handle.id, "intent.created", "intent.updated")
    with tenant_transaction(handle.id) as conn:
        current = webhook_store.get_to_change(conn, uuid.UUID(subscription_id), enabling=True)
        assert current is not None and current.enabled
        assert _deliveries_free(api, subscription_id)
        webhook_store.update(
            conn, current, url=current.url, event_types=current.event_types, description="d", enabled=True
        )
        assert _deliveries_free(api, subscription_id)

    # A disabled one's deliveries are locked first (the re-enable resumes its failed ones).
    disabled = api.client.patch(f"{HOOKS}/{subscription_id}", json={"enabled": False}, headers=headers)
    assert disabled.status_code == 200, disabled.text
    with tenant_transaction(handle.id) as conn:
        current = webhook_store.get_to_change(conn, uuid.UUID(subscription_id), enabling=True)
        assert current is not None and not current.enabled
        assert not _deliveries_free(api, subscription_id)


def test_a_subscription_disabled_after_it_was_read_enabled_has_its_deliveries_locked(
    api: ApiHarness, local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a sender that disables it between the change's first read and its lock: the lock is taken again after the
    deliveries', and the re-enable resumes the failed one."""
    handle, headers = tenant(api, "etag-enable-raced")
    subscription_id, _ = _subscribe(api, headers)
    emit(handle.id, "intent.created")
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute(
            "UPDATE app.webhook_deliveries SET state = 'failed' WHERE subscription_id = %s", (subscription_id,)
        )
        admin.execute(
            "UPDATE app.webhook_subscriptions SET enabled = false, disabled_reason = 'x' WHERE id = %s",
            (subscription_id,),
        )
    read = webhook_store.get

    def read_before_the_disabling(conn: Any, target: uuid.UUID) -> webhook_store.Subscription | None:
        found = read(conn, target)
        return None if found is None else dataclasses.replace(found, enabled=True)

    with monkeypatch.context() as patched, tenant_transaction(handle.id) as conn:
        patched.setattr(webhook_store, "get", read_before_the_disabling)
        current = webhook_store.get_to_change(conn, uuid.UUID(subscription_id), enabling=True)
        assert current is not None and not current.enabled
        assert not _deliveries_free(api, subscription_id)
        webhook_store.update(
            conn, current, url=current.url, event_types=current.event_types, description="", enabled=True
        )
    states = [
        row["state"] for row in api.client.get(f"{HOOKS}/{subscription_id}/deliveries", headers=headers).json()["items"]
    ]
    assert states == ["pending"]
    assert api.client.get(f"{HOOKS}/{subscription_id}", headers=headers).json()["enabled"] is True


def test_a_subscription_gone_before_a_request_with_if_match_arrives_is_404(api: ApiHarness, local: None) -> None:
    # RFC 9110: a precondition is ignored when the answer without it is an error; `*` included (it was 412 on PATCH).
    _, headers = tenant(api, "etag-gone-before")
    missing = f"{HOOKS}/{uuid.uuid4()}"
    answers = {
        (method, if_match): api.client.request(
            method,
            missing + ("/rotate-secret" if method == "POST" else ""),
            json={"description": "x"} if method == "PATCH" else None,
            headers=headers if if_match is None else headers | {"If-Match": if_match},
        ).status_code
        for method in ("PATCH", "DELETE", "POST")
        for if_match in (None, "*", '"x.v1"')
    }
    assert set(answers.values()) == {404}, answers
