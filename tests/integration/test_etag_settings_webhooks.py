# intent_ref: platform.tenants
"""The tenant's settings and its webhook subscriptions answer ETags and honour If-Match (ADR 0045): a stale one is
412 and changes nothing, a matching one applies and moves the ETag, of two changes sent with one ETag exactly one
applies, and a change that waited for another one made meanwhile is 412. Without If-Match a change applies as
before."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from shared.db.session import platform_transaction, tenant_transaction
from shared.events import webhook_store
from shared.tenants.models import TenantUpdate
from shared.tenants.repository import merge_own_settings, update_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import Receiver, emit, local, tenant  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration

ADMIN = ["Tenant.Admin"]
TENANT = "/api/v1/tenant"
HOOKS = "/api/v1/webhooks"


def _stale(response: Any) -> None:
    """A 412 problem document of the intents' type and title."""
    assert response.status_code == 412, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/precondition-failed") and body["title"] == "Precondition failed", body
    assert "etag" not in {name.lower() for name in response.headers}


def _snapshot(api: ApiHarness, table: str, tenant_id: uuid.UUID) -> list[tuple[Any, ...]]:
    column = "id" if table == "tenants" else "tenant_id"
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        query = f"SELECT * FROM app.{table} WHERE {column} = %s ORDER BY 1, 2"
        return conn.execute(query, (tenant_id,)).fetchall()


def _while_held(
    api: ApiHarness, tenant_id: uuid.UUID, hold: Callable[[Any], object], request: Callable[[], Any]
) -> Any:
    """`request()`'s response, sent while `hold(conn)` is written in a tenant transaction not yet committed."""
    with tenant_transaction(tenant_id) as conn:
        hold(conn)
        sent = RequestWhileHeld(api, conn, request)
    return sent.answer()


class RequestWhileHeld:
    """`request()` sent on a thread while `conn`'s transaction holds its locks; it returns once the request waits for
    one of them (asserted by `answer`, called after that transaction commits)."""

    def __init__(self, api: ApiHarness, conn: Any, request: Callable[[], Any]) -> None:
        self._answers: list[Any] = []
        self._sender = threading.Thread(target=lambda: self._answers.append(request()))
        self._sender.start()
        holder, self._blocked = conn.info.backend_pid, False
        with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin:
            for _ in range(1500):
                query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
                row = admin.execute(query, (holder,)).fetchone()
                if row is not None and row[0] >= 1:
                    self._blocked = True
                    break
                if not self._sender.is_alive():
                    break
                time.sleep(0.02)

    def answer(self) -> Any:
        """The response, once the holding transaction has ended."""
        self._sender.join(60)
        assert not self._sender.is_alive() and self._answers
        assert self._blocked, f"the request did not wait for the change held open: {self._answers[0].status_code}"
        return self._answers[0]


def _side_by_side(send: Callable[[str], Any], names: tuple[str, str]) -> dict[str, Any]:
    """Each name's response, the two sent at once."""
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def run(name: str) -> None:
        barrier.wait()
        results[name] = send(name)

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 2
    return results


# --- the tenant's settings --------------------------------------------------------------------------------------


def _settings_etag(api: ApiHarness, name: str) -> str:
    response = api.client.get(TENANT, headers=api.headers(name, ADMIN))
    assert response.status_code == 200, response.text
    etag: str = response.headers["ETag"]
    assert re.fullmatch(r'"tenant\.v[0-9]+"', etag), etag
    return etag


def _patch_settings(api: ApiHarness, name: str, settings: dict[str, Any], if_match: str | None = None) -> Any:
    headers = api.headers(name, ADMIN) | ({"If-Match": if_match} if if_match is not None else {})
    return api.client.patch(TENANT, json={"settings": settings}, headers=headers)


def test_the_settings_answer_an_etag_that_a_change_moves(api: ApiHarness) -> None:
    handle = api.provision("etag-settings")
    first = _settings_etag(api, "etag-settings")
    assert _settings_etag(api, "etag-settings") == first  # unchanged, the same

    changed = _patch_settings(api, "etag-settings", {"allowed_hosts": ["api.example.com"]}, first)
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"]["allowed_hosts"] == ["api.example.com"]
    second = changed.headers["ETag"]
    assert second != first and _settings_etag(api, "etag-settings") == second

    # Another admin's change with the first ETag: refused, nothing of it lands.
    before = _snapshot(api, "tenants", handle.id)
    _stale(_patch_settings(api, "etag-settings", {"allowed_hosts": ["evil.example.com"]}, first))
    for stale in ('"definitely-stale"', f"W/{second}", second.strip('"'), '""', f'"{second}"'):
        _stale(_patch_settings(api, "etag-settings", {"allowed_hosts": ["evil.example.com"]}, stale))
    # Stale and invalid at once: the precondition is answered first.
    _stale(_patch_settings(api, "etag-settings", {"allowed_hosts": ["169.254.169.254"]}, first))
    assert _snapshot(api, "tenants", handle.id) == before

    # A list naming the current ETag matches; `*` matches; no If-Match applies as before (ADR 0045).
    listed = _patch_settings(api, "etag-settings", {"feature.x": 1}, f'"tenant.v999", {second}')
    assert listed.status_code == 200, listed.text
    star = _patch_settings(api, "etag-settings", {"feature.x": 2}, "*")
    assert star.status_code == 200 and star.headers["ETag"] != listed.headers["ETag"]
    plain = _patch_settings(api, "etag-settings", {"feature.x": 3})
    assert plain.status_code == 200 and plain.json()["settings"]["feature.x"] == 3
    assert plain.headers["ETag"] == _settings_etag(api, "etag-settings") != star.headers["ETag"]


def test_a_change_by_the_control_plane_moves_the_settings_etag(api: ApiHarness) -> None:
    handle = api.provision("etag-control")
    etag = _settings_etag(api, "etag-control")
    with platform_transaction() as conn:
        assert update_tenant(conn, handle.id, TenantUpdate(allowed_targets=["staging"])) is not None
    _stale(_patch_settings(api, "etag-control", {"feature.x": True}, etag))
    assert _settings_etag(api, "etag-control") != etag


def test_two_settings_changes_sent_with_one_etag_exactly_one_applies(api: ApiHarness) -> None:
    api.provision("etag-race")
    etag = _settings_etag(api, "etag-race")
    results = _side_by_side(
        lambda name: _patch_settings(api, "etag-race", {"allowed_hosts": [f"{name}.example.com"]}, etag),
        ("left", "right"),
    )
    assert sorted(response.status_code for response in results.values()) == [200, 412]
    winner = next(name for name, response in results.items() if response.status_code == 200)
    _stale(next(response for response in results.values() if response.status_code == 412))
    shown = api.client.get(TENANT, headers=api.headers("etag-race", ADMIN)).json()
    assert shown["settings"]["allowed_hosts"] == [f"{winner}.example.com"]


def test_a_settings_change_that_waited_for_another_one_is_412(api: ApiHarness) -> None:
    handle = api.provision("etag-waited")
    etag = _settings_etag(api, "etag-waited")
    # The request reads the settings at the ETag's version (the other change is not committed), then its UPDATE waits
    # for that change's row lock: only the UPDATE's own comparison sees the row moved on.
    answer = _while_held(
        api,
        handle.id,
        lambda conn: merge_own_settings(conn, {"allowed_hosts": ["first.example.com"]}),
        lambda: _patch_settings(api, "etag-waited", {"allowed_hosts": ["second.example.com"]}, etag),
    )
    _stale(answer)
    shown = api.client.get(TENANT, headers=api.headers("etag-waited", ADMIN)).json()
    assert shown["settings"]["allowed_hosts"] == ["first.example.com"]


# --- webhook subscriptions --------------------------------------------------------------------------------------


def _subscribe(api: ApiHarness, headers: dict[str, str], **extra: str) -> tuple[str, str]:
    created = api.client.post(HOOKS, json={"url": Receiver().url, "event_types": ["*"]}, headers=headers | extra)
    assert created.status_code == 201, created.text
    subscription_id: str = created.json()["id"]
    etag: str = created.headers["ETag"]
    assert etag == f'"{subscription_id}.v1"'
    return subscription_id, etag


def _hook_etag(api: ApiHarness, headers: dict[str, str], subscription_id: str) -> str:
    response = api.client.get(f"{HOOKS}/{subscription_id}", headers=headers)
    assert response.status_code == 200, response.text
    etag: str = response.headers["ETag"]
    return etag


def test_a_subscription_answers_an_etag_that_a_change_moves(api: ApiHarness, local: None) -> None:
    handle, headers = tenant(api, "etag-hooks")
    subscription_id, created = _subscribe(api, headers)
    path = f"{HOOKS}/{subscription_id}"
    assert _hook_etag(api, headers, subscription_id) == created

    changed = api.client.patch(path, json={"description": "one"}, headers=headers | {"If-Match": created})
    assert changed.status_code == 200 and changed.json()["description"] == "one", changed.text
    second = changed.headers["ETag"]
    assert second != created and _hook_etag(api, headers, subscription_id) == second

    # Stale: PATCH, rotation and DELETE are 412 and change nothing (the subscription, its secret, its deliveries).
    emit(handle.id, "intent.created")
    before = [_snapshot(api, table, handle.id) for table in ("webhook_subscriptions", "webhook_deliveries")]
    assert before[1], "a delivery to keep"
    stale = headers | {"If-Match": created}
    _stale(api.client.patch(path, json={"description": "lost", "enabled": False}, headers=stale))
    _stale(api.client.patch(path, json={"url": "http://10.0.0.7/x"}, headers=stale))  # before the URL's check
    _stale(api.client.post(f"{path}/rotate-secret", headers=stale))
    _stale(api.client.delete(path, headers=stale))
    for other in ('"definitely-stale"', f"W/{second}", f'"{uuid.uuid4()}.v2"', second.strip('"'), '""'):
        _stale(api.client.delete(path, headers=headers | {"If-Match": other}))
    assert [_snapshot(api, table, handle.id) for table in ("webhook_subscriptions", "webhook_deliveries")] == before

    # Matching: a rotation moves the ETag and answers it; `*` matches; no If-Match applies as before (ADR 0045).
    rotated = api.client.post(f"{path}/rotate-secret", headers=headers | {"If-Match": f'"x", {second}'})
    assert rotated.status_code == 200 and rotated.json()["secret"].startswith("whsec_"), rotated.text
    third = rotated.headers["ETag"]
    assert third not in (created, second) and _hook_etag(api, headers, subscription_id) == third
    star = api.client.patch(path, json={"description": "star"}, headers=headers | {"If-Match": "*"})
    assert star.status_code == 200 and star.headers["ETag"] != third
    plain = api.client.patch(path, json={"description": "plain"}, headers=headers)
    assert plain.status_code == 200 and plain.headers["ETag"] == _hook_etag(api, headers, subscription_id)
    _stale(api.client.delete(path, headers=headers | {"If-Match": third}))
    deleted = api.client.delete(path, headers=headers | {"If-Match": plain.headers["ETag"]})
    assert deleted.status_code == 204, deleted.text
    assert api.client.get(path, headers=headers).status_code == 404
    assert _snapshot(api, "webhook_deliveries", handle.id) == []

    other_id, _ = _subscribe(api, headers)
    assert api.client.delete(f"{HOOKS}/{other_id}", headers=headers | {"If-Match": "*"}).status_code == 204


def test_a_create_retried_with_its_idempotency_key_answers_the_same_etag(api: ApiHarness, local: None) -> None:
    _, headers = tenant(api, "etag-hooks-retry")
    keyed = headers | {"Idempotency-Key": f"etag-{uuid.uuid4().hex}"}
    body = {"url": Receiver().url, "event_types": ["*"]}
    first = api.client.post(HOOKS, json=body, headers=keyed)
    assert first.status_code == 201, first.text
    replay = api.client.post(HOOKS, json=body, headers=keyed)
    assert replay.status_code == 201 and replay.json()["id"] == first.json()["id"], replay.text
    assert replay.headers["ETag"] == first.headers["ETag"] == f'"{first.json()["id"]}.v1"'


def test_what_a_delivery_shows_moves_the_etag_and_what_it_does_not_show_does_not(api: ApiHarness, local: None) -> None:
    handle, headers = tenant(api, "etag-hooks-sender")
    subscription_id, etag = _subscribe(api, headers)
    with tenant_transaction(handle.id) as conn:  # as the sender stamps a subscription it sent to, and seals again
        conn.execute("UPDATE app.webhook_subscriptions SET last_sent_at = clock_timestamp(), secret = secret")
    assert _hook_etag(api, headers, subscription_id) == etag
    with tenant_transaction(handle.id) as conn:  # as the sender counts a failed attempt
        conn.execute("UPDATE app.webhook_subscriptions SET consecutive_failures = consecutive_failures + 1")
    moved = _hook_etag(api, headers, subscription_id)
    assert moved != etag
    _stale(api.client.patch(f"{HOOKS}/{subscription_id}", json={"enabled": True}, headers=headers | {"If-Match": etag}))
    # A tenant's transaction cannot wind the version back to one an old ETag names.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(handle.id) as conn:
        conn.execute("UPDATE app.webhook_subscriptions SET version = 1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(handle.id) as conn:
        conn.execute("UPDATE app.tenants SET version = 1")


def test_two_subscription_changes_sent_with_one_etag_exactly_one_applies(api: ApiHarness, local: None) -> None:
    _, headers = tenant(api, "etag-hooks-race")
    subscription_id, etag = _subscribe(api, headers)
    path = f"{HOOKS}/{subscription_id}"
    results = _side_by_side(
        lambda name: api.client.patch(path, json={"description": name}, headers=headers | {"If-Match": etag}),
        ("left", "right"),
    )
    assert sorted(response.status_code for response in results.values()) == [200, 412]
    winner = next(name for name, response in results.items() if response.status_code == 200)
    _stale(next(response for response in results.values() if response.status_code == 412))
    assert api.client.get(path, headers=headers).json()["description"] == winner


def test_a_subscription_change_or_delete_that_waited_for_another_change_is_412(api: ApiHarness, local: None) -> None:
    handle, headers = tenant(api, "etag-hooks-waited")
    subscription_id, etag = _subscribe(api, headers)
    path = f"{HOOKS}/{subscription_id}"
    emit(handle.id, "intent.created")
    # Each other change really changes the subscription: one that changes nothing keeps its ETag (ADR 0045).
    descriptions = iter(("first", "first, again"))

    def other_change(conn: Any) -> None:
        current = webhook_store.get_to_change(conn, uuid.UUID(subscription_id))
        assert current is not None
        webhook_store.update(
            conn,
            current,
            url=current.url,
            event_types=current.event_types,
            description=next(descriptions),
            enabled=True,
        )

    patched = _while_held(
        api,
        handle.id,
        other_change,
        lambda: api.client.patch(path, json={"description": "second"}, headers=headers | {"If-Match": etag}),
    )
    _stale(patched)
    assert api.client.get(path, headers=headers).json()["description"] == "first"

    # The delete removes the deliveries first, then finds the subscription moved on: the deliveries come back.
    etag = _hook_etag(api, headers, subscription_id)
    deliveries = _snapshot(api, "webhook_deliveries", handle.id)
    assert deliveries
    deleted = _while_held(
        api, handle.id, other_change, lambda: api.client.delete(path, headers=headers | {"If-Match": etag})
    )
    _stale(deleted)
    assert api.client.get(path, headers=headers).status_code == 200
    assert _snapshot(api, "webhook_deliveries", handle.id) == deliveries
