# intent_ref: platform.hardening
"""Secrets sealed at rest (ADR 0040): webhook signing secrets and task-token keys are kept sealed under a key outside
the database, open only for the row they were sealed for, and the sealing timer seals what was kept in plain text
before and what a previous key sealed."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import task_tokens
from shared.engine.steps import AttemptKey
from shared.events import webhook_store, webhooks
from shared.sealing import SealError, sealer
from shared.secret_sealing import seal_stored_secrets
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import Receiver, emit, local, tenant, verify  # noqa: F401  # local: fixture

pytestmark = pytest.mark.integration
KEY_A = "rotation test key A: " + "a" * 40
KEY_B = "rotation test key B: " + "b" * 40


def _admin(api: ApiHarness) -> psycopg.Connection[dict[str, Any]]:
    """A superuser connection (as a backup or a support query sees the tables), past row-level security."""
    return psycopg.connect(api.admin_url, dbname="quantum", autocommit=True, row_factory=dict_row)


def _stored_secret(api: ApiHarness, subscription_id: str) -> str:
    with _admin(api) as conn:
        row = conn.execute("SELECT secret FROM app.webhook_subscriptions WHERE id = %s", (subscription_id,)).fetchone()
    assert row is not None
    return str(row["secret"])


def _stored_key(api: ApiHarness, tenant_id: uuid.UUID) -> dict[str, Any]:
    with _admin(api) as conn:
        row = conn.execute(
            "SELECT secret, sealed_secret FROM app.task_token_keys WHERE tenant_id = %s", (tenant_id,)
        ).fetchone()
    assert row is not None
    return row


def _issue(tenant_id: uuid.UUID) -> str:
    key = AttemptKey(uuid.uuid4(), "deploy", "run", 1)
    with tenant_transaction(tenant_id) as conn:
        return task_tokens.issue(conn, tenant_id, key, 3600).token


def _verifies(tenant_id: uuid.UUID, token: str) -> bool:
    task_tokens._keys.clear()  # read the key from its row, not from this process's memory of it
    with tenant_transaction(tenant_id) as conn:
        return task_tokens.verify(conn, token).tenant_id == tenant_id


def _subscribe(api: ApiHarness, headers: dict[str, str], url: str, key: str | None = None) -> dict[str, Any]:
    extra = {"Idempotency-Key": key} if key else {}
    created = api.client.post(
        "/api/v1/webhooks", json={"url": url, "event_types": ["intent.created"]}, headers={**headers, **extra}
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


@pytest.fixture
def sealing_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Sets the sealing keys of this process for a test (as an app restart with new settings would)."""

    def use(current: str | None, previous: str | None = None) -> None:
        for name, value in (("QP_SEALING_KEY", current), ("QP_SEALING_KEY_PREVIOUS", previous)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        sealer.cache_clear()

    yield use
    use(None)


def test_a_subscriptions_secret_and_its_kept_answer_hold_it_sealed(api: ApiHarness, local: None) -> None:
    receiver = Receiver()
    handle, headers = tenant(api, "sealed-a")
    key = f"create-{uuid.uuid4()}"
    created = _subscribe(api, headers, receiver.url, key)
    secret = created["secret"]

    stored = _stored_secret(api, created["id"])
    assert stored.startswith("qpsealed1.") and secret not in stored
    with _admin(api) as conn:
        kept = conn.execute(
            "SELECT response_body::text AS body FROM app.idempotency_keys WHERE tenant_id = %s AND key = %s",
            (handle.id, key),
        ).fetchone()
    assert kept is not None and secret not in kept["body"] and secret[6:] not in kept["body"]
    # A retry of the create gets the first answer, secret included, and subscribes nothing more.
    assert _subscribe(api, headers, receiver.url, key) == created
    assert len(api.client.get("/api/v1/webhooks", headers=headers).json()["items"]) == 1

    emit(handle.id, "intent.created")
    assert webhooks.deliver_tenant(handle.id).delivered == 1
    assert verify(secret, *receiver.received[-1])


def test_a_sealed_secret_moved_to_another_row_does_not_open_and_no_delivery_is_lost(
    api: ApiHarness, local: None
) -> None:
    receiver = Receiver()
    handle, headers = tenant(api, "sealed-b")
    victim, victim_headers = tenant(api, "sealed-c")
    mine = _subscribe(api, headers, receiver.url)
    other = _subscribe(api, headers, receiver.url)
    theirs = _subscribe(api, victim_headers, receiver.url)
    with _admin(api) as conn:
        # Whoever can write the table copies one row's sealed secret into another row, of its tenant or another's.
        conn.execute(
            "UPDATE app.webhook_subscriptions SET secret = %s WHERE id = ANY(%s)",
            (_stored_secret(api, mine["id"]), [uuid.UUID(other["id"]), uuid.UUID(theirs["id"])]),
        )
    for tenant_id in (handle.id, victim.id):
        emit(tenant_id, "intent.created")
        webhooks.deliver_tenant(tenant_id)
    # Only the row whose own secret it is was sent to, signed with it (since 2026-12-07 a secret that does not open
    # holds up its own subscription only); nothing was signed with a secret that is not the subscription's own.
    assert len(receiver.received) == 1 and verify(mine["secret"], *receiver.received[0])
    with _admin(api) as conn:
        pending = conn.execute(
            "SELECT count(*) AS n FROM app.webhook_deliveries WHERE subscription_id = ANY(%s)"
            " AND state = 'pending' AND attempts = 0",
            ([uuid.UUID(s["id"]) for s in (other, theirs)],),
        ).fetchone()
    assert pending == {"n": 2}  # the others' deliveries still wait


def test_plain_text_secrets_kept_before_sealing_are_read_then_sealed_by_the_timer(
    api: ApiHarness, local: None, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    receiver = Receiver()
    handle, headers = tenant(api, "sealed-d")
    created = _subscribe(api, headers, receiver.url)
    legacy_secret = "whsec_" + "c2VhbGVkLWJ5LXRoZS10aW1lci1wbGVhc2UtdGhhbmtz"
    legacy_key = secrets.token_bytes(32)
    with _admin(api) as conn:  # as the rows were before migration 0031
        conn.execute("UPDATE app.webhook_subscriptions SET secret = %s WHERE id = %s", (legacy_secret, created["id"]))
        conn.execute("INSERT INTO app.task_token_keys (tenant_id, secret) VALUES (%s, %s)", (handle.id, legacy_key))
    task_tokens._keys.clear()
    token = _issue(handle.id)
    assert _verifies(handle.id, token)
    emit(handle.id, "intent.created")
    assert webhooks.deliver_tenant(handle.id).delivered == 1
    assert verify(legacy_secret, *receiver.received[-1])

    result = seal_stored_secrets(pool=app_pool, control_pool=control_pool, max_tenants=1000)
    assert result.failed_tenants == 0 and result.webhook_secrets >= 1 and result.task_token_keys >= 1
    stored, key_row = _stored_secret(api, created["id"]), _stored_key(api, handle.id)
    assert stored.startswith(sealer().current_prefix) and legacy_secret not in stored
    assert key_row["secret"] is None and key_row["sealed_secret"].startswith(sealer().current_prefix)
    # The secrets are the same ones, sealed: the token issued before still verifies, the receiver's secret signs.
    assert _verifies(handle.id, token)
    emit(handle.id, "intent.created")
    assert webhooks.deliver_tenant(handle.id).delivered == 1
    assert verify(legacy_secret, *receiver.received[-1])
    # Nothing of this tenant is left to seal, so a second run does not visit it.
    with _admin(api) as conn:
        left = conn.execute(
            "SELECT count(*) AS n FROM app.tenants_with_secrets_to_seal(%s, 100000) AS t (id) WHERE id = %s",
            (sealer().current_prefix, handle.id),
        ).fetchone()
    assert left == {"n": 0}


def test_a_rotated_key_opens_through_the_previous_one_until_the_timer_seals_again(
    api: ApiHarness,
    local: None,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    sealing_keys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_store, "UNOPENED_RETRY_S", 0.0)  # a head left unopened is due again at once
    receiver = Receiver()
    sealing_keys(KEY_A)
    handle, headers = tenant(api, "sealed-e")
    created = _subscribe(api, headers, receiver.url)
    task_tokens._keys.clear()
    token = _issue(handle.id)
    sealed_a = _stored_secret(api, created["id"])

    sealing_keys(KEY_B)  # rotated without the previous key: what A sealed does not open
    emit(handle.id, "intent.created")
    assert webhooks.deliver_tenant(handle.id).delivered == 0 and receiver.received == []
    with pytest.raises(SealError):
        _verifies(handle.id, token)

    sealing_keys(KEY_B, previous=KEY_A)  # the rotation as documented: both until the timer has run
    assert webhooks.deliver_tenant(handle.id).delivered == 1
    assert verify(created["secret"], *receiver.received[-1])
    assert _verifies(handle.id, token)
    # The other tests' tenants hold values of the development key, which this process does not have now: they are
    # logged and left as they are (counted as unopened); this tenant's are sealed again.
    result = seal_stored_secrets(pool=app_pool, control_pool=control_pool, max_tenants=1000)
    assert result.webhook_secrets >= 1 and result.task_token_keys >= 1
    sealed_b = _stored_secret(api, created["id"])
    assert sealed_b != sealed_a and sealed_b.startswith(sealer().current_prefix)
    assert _stored_key(api, handle.id)["sealed_secret"].startswith(sealer().current_prefix)

    sealing_keys(KEY_B)  # the previous key retired: everything opens under the new one alone
    assert _verifies(handle.id, token)
    emit(handle.id, "intent.created")
    assert webhooks.deliver_tenant(handle.id).delivered == 1
    assert verify(created["secret"], *receiver.received[-1])


def test_the_app_cannot_list_the_tenants_with_secrets_to_seal(api: ApiHarness) -> None:
    with psycopg.connect(api.app_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM app.tenants_with_secrets_to_seal('qpsealed1.', 10)")


def test_another_tenants_key_stays_out_of_reach(api: ApiHarness) -> None:
    handle, other = api.provision("sealed-f"), api.provision("sealed-g")
    _issue(handle.id)
    with tenant_transaction(other.id) as conn:
        rows = conn.execute("SELECT tenant_id FROM app.task_token_keys WHERE tenant_id = %s", (handle.id,)).fetchall()
        assert rows == []
        changed = conn.execute(
            "UPDATE app.task_token_keys SET sealed_secret = %s WHERE tenant_id = %s",
            ("qpsealed1.x.y", handle.id),
        ).rowcount
        assert changed == 0


class _RaisedEvents:
    """The orchestration client the completion route raises a recorded result through (no orchestration here)."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, str]] = []

    async def raise_event(self, instance_id: str, name: str, data: Any) -> None:
        self.raised.append((instance_id, name))


def test_a_task_token_key_that_does_not_open_answers_503_and_hands_out_or_records_nothing(
    api: ApiHarness, app_pool: ConnectionPool[Any], sealing_keys: Any
) -> None:
    from shared.api.durable import get_durable_client
    from shared.engine import steps as store
    from tests.integration.test_work_queue import ACTION, queued

    events = _RaisedEvents()
    api.client.app.dependency_overrides[get_durable_client] = lambda: events
    try:
        sealing_keys(KEY_A)
        task_tokens._keys.clear()
        handle = api.provision("sealed-h")
        worker = api.headers("sealed-h", ["Module.Worker"])
        lease_body = {"actions": [ACTION], "max_items": 1, "lease_s": 60, "worker": "w-1"}
        first = queued(app_pool, handle.id)
        leased = api.client.post("/api/v1/work/lease", json=lease_body, headers=worker)
        assert leased.status_code == 200, leased.text
        token = leased.json()["items"][0]["task_token"]
        second = queued(app_pool, handle.id)

        sealing_keys(KEY_B)  # the key the tenant's signing key was sealed under is gone from the settings
        task_tokens._keys.clear()
        complete = f"/api/v1/executions/{first.execution_id}/steps/{first.step_id}/complete"
        answered = api.client.post(complete, json={"task_token": token, "output": {"image": "x"}})
        # "Later", not "never": the worker's retry completes once the key is back (below).
        assert answered.status_code == 503, answered.text
        assert answered.headers["content-type"].startswith("application/problem+json")
        assert answered.headers["retry-after"] == "30"
        assert answered.json()["type"].endswith("/secret-unavailable")
        assert answered.json()["request_id"] and "qpsealed1" not in answered.text
        refused_lease = api.client.post("/api/v1/work/lease", json=lease_body, headers=worker)
        assert refused_lease.status_code == 503, refused_lease.text
        assert refused_lease.headers["content-type"].startswith("application/problem+json")
        assert refused_lease.headers["retry-after"] == "30"
        with tenant_transaction(handle.id) as conn:
            # Nothing recorded, nothing spent, nothing handed out: the lease of the second item rolled back.
            attempt = store.get_attempt(conn, first)
            assert attempt is not None and attempt.finished_at is None
            row = conn.execute("SELECT leased_at FROM app.work_items WHERE execution_id = %s", (second.execution_id,))
            assert row.fetchone() == {"leased_at": None}
        assert events.raised == []

        sealing_keys(KEY_B, previous=KEY_A)  # the rotation as documented: the same token now completes once
        task_tokens._keys.clear()
        answered = api.client.post(complete, json={"task_token": token, "output": {"image": "x"}})
        assert answered.status_code == 200, answered.text
        assert events.raised == [(str(first.execution_id), first.event_name)]
        assert api.client.post("/api/v1/work/lease", json=lease_body, headers=worker).json()["items"]
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client, None)
