# intent_ref: platform.hardening
"""The sealing timer and values it cannot open (ADR 0040, amended 2026-12-06): a value sealed under a key this process
lacks is left as it is while the tenant's other values are sealed, and tenants holding such values do not keep the
tenants after them by id from being sealed (the finder names tenants in random order, migration 0042)."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction, tenant_transaction
from shared.sealing import SealedFor, Sealer, sealer
from shared.secret_sealing import seal_stored_secrets

pytestmark = pytest.mark.integration

# A key this process does not have: what it sealed stands for values sealed under a key retired too early.
RETIRED = Sealer("sealing skips poisoned test, a retired key: " + "r" * 40)
_SUBSCRIBE = (
    "INSERT INTO app.webhook_subscriptions (tenant_id, id, url, event_types, secret)"
    " VALUES (%s, %s, 'https://example.com/h', '{x.y}', %s)"
)
_KEY = "INSERT INTO app.task_token_keys (tenant_id, secret, sealed_secret) VALUES (%s, %s, %s)"
_FINDER = "SELECT t FROM app.tenants_with_secrets_to_seal(%s, 1000000) AS found (t)"


class Tenants:
    """Bare tenants with ids of the test's choosing; their secrets are removed afterwards, since a value no process
    opens would be left to every later sealing run of the session's database."""

    def __init__(self, pg: Any, app_pool: ConnectionPool[Any]) -> None:
        self._pg = pg
        self._app_pool = app_pool
        self.made: list[uuid.UUID] = []

    def make(self, first_hex: str) -> uuid.UUID:
        """A tenant whose id starts with `first_hex` (8 hex digits), which sets its place in id order."""
        tenant_id = uuid.UUID(first_hex + uuid.uuid4().hex[8:])
        with psycopg.connect(self._pg.control_url, autocommit=True) as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE qp_platform")
            conn.execute(
                "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
                (tenant_id, f"t-{tenant_id.hex[:12]}", uuid.uuid4()),
            )
        self.made.append(tenant_id)
        return tenant_id

    def subscribe(self, tenant_id: uuid.UUID, *, plain: bool) -> uuid.UUID:
        """A subscription keeping its secret in plain text (from before sealing), or sealed under the retired key."""
        subscription = uuid.uuid4()
        secret = "whsec_" + secrets.token_urlsafe(24)
        if not plain:
            secret = RETIRED.seal(secret.encode("ascii"), SealedFor("webhook-secret", tenant_id, str(subscription)))
        with tenant_transaction(tenant_id, pool=self._app_pool) as conn:
            conn.execute(_SUBSCRIBE, (tenant_id, subscription, secret))
        return subscription

    def signing_key(self, tenant_id: uuid.UUID, *, plain: bool) -> None:
        """The tenant's task-token key, in plain text or sealed under the retired key."""
        key = secrets.token_bytes(32)
        row = (key, None) if plain else (None, RETIRED.seal(key, SealedFor("task-token-key", tenant_id, "signing")))
        with tenant_transaction(tenant_id, pool=self._app_pool) as conn:
            conn.execute(_KEY, (tenant_id, *row))

    def stored(self, tenant_id: uuid.UUID) -> dict[str, Any]:
        """What the tables keep for the tenant, read past row-level security."""
        with psycopg.connect(self._pg.admin_url, dbname="quantum", row_factory=dict_row) as conn:
            subscriptions = conn.execute(
                "SELECT id, secret FROM app.webhook_subscriptions WHERE tenant_id = %s", (tenant_id,)
            ).fetchall()
            key = conn.execute(
                "SELECT secret, sealed_secret FROM app.task_token_keys WHERE tenant_id = %s", (tenant_id,)
            ).fetchone()
        return {"subscriptions": {row["id"]: row["secret"] for row in subscriptions}, "key": key}

    def remove_secrets(self) -> None:
        with psycopg.connect(self._pg.admin_url, dbname="quantum", autocommit=True) as conn:
            conn.execute("DELETE FROM app.webhook_subscriptions WHERE tenant_id = ANY(%s)", (self.made,))
            conn.execute("DELETE FROM app.task_token_keys WHERE tenant_id = ANY(%s)", (self.made,))


@pytest.fixture
def tenants(pg: Any, app_pool: ConnectionPool[Any], process_pools: None) -> Iterator[Tenants]:
    """Tenants to seal; the process's settings (its sealing key) are the session's."""
    made = Tenants(pg, app_pool)
    yield made
    made.remove_secrets()


def _sealed_now(value: str | None) -> bool:
    return value is not None and value.startswith(sealer().current_prefix)


def test_a_value_that_does_not_open_is_left_and_the_tenants_other_values_are_sealed(
    tenants: Tenants, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    tenant = tenants.make(uuid.uuid4().hex[:8])
    # Plain ones on both sides of the unopened one in id order: it rolled back those sealed before it, too.
    plain = [tenants.subscribe(tenant, plain=True) for _ in range(2)]
    unopened = tenants.subscribe(tenant, plain=False)
    plain += [tenants.subscribe(tenant, plain=True) for _ in range(2)]
    tenants.signing_key(tenant, plain=True)
    before = tenants.stored(tenant)

    result = seal_stored_secrets(pool=app_pool, control_pool=control_pool, max_tenants=1_000_000)

    after = tenants.stored(tenant)
    assert all(_sealed_now(after["subscriptions"][s]) for s in plain)
    assert after["key"]["secret"] is None and _sealed_now(after["key"]["sealed_secret"])
    assert after["subscriptions"][unopened] == before["subscriptions"][unopened]  # left exactly as it was
    assert result.unopened >= 1 and result.webhook_secrets >= 4 and result.task_token_keys >= 1


def test_a_signing_key_that_does_not_open_leaves_the_tenants_webhook_secrets_sealed(
    tenants: Tenants, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    tenant = tenants.make(uuid.uuid4().hex[:8])
    subscription = tenants.subscribe(tenant, plain=True)
    tenants.signing_key(tenant, plain=False)
    before = tenants.stored(tenant)

    seal_stored_secrets(pool=app_pool, control_pool=control_pool, max_tenants=1_000_000)

    after = tenants.stored(tenant)
    assert _sealed_now(after["subscriptions"][subscription])
    assert after["key"] == before["key"]


def test_tenants_whose_values_never_open_do_not_keep_the_tenants_after_them_from_being_sealed(
    tenants: Tenants, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    # First and last in id order: a run that takes all but one tenant took the first ones by id every time.
    poisoned = tenants.make("00000000")
    tenants.signing_key(poisoned, plain=False)
    last = tenants.make("ffffffff")
    tenants.signing_key(last, plain=True)

    # Every run leaves out one of the tenants with something to seal (the others of the session's database count as
    # well). In random order the last is left out of a run with a chance of one in two at most; 40 runs leave it
    # unsealed with a chance below one in 10^12. In id order it was left out of every run.
    for _ in range(40):
        with platform_transaction(pool=control_pool) as conn:
            waiting = len(conn.execute(_FINDER, (sealer().current_prefix,)).fetchall())
        assert waiting >= 2  # the poisoned tenant stays, and the last until it is sealed
        seal_stored_secrets(pool=app_pool, control_pool=control_pool, max_tenants=waiting - 1)
        if _sealed_now(tenants.stored(last)["key"]["sealed_secret"]):
            break
    assert _sealed_now(tenants.stored(last)["key"]["sealed_secret"])
    assert tenants.stored(poisoned)["key"]["secret"] is None  # still sealed under the retired key, untouched


def test_a_locked_subscription_fails_its_tenant_within_the_bound_and_the_next_run_seals_it(
    tenants: Tenants, pg: Any, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    # The pass waited for a row held elsewhere up to the statement timeout (60 s) per tenant, where the other timers
    # give such a tenant up after bounded_lock_waits' bound and seal the others.
    held_s = 8.0
    tenant = tenants.make(uuid.uuid4().hex[:8])
    held = tenants.subscribe(tenant, plain=True)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:  # as the relay's fan-out holds it while it publishes
        with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
            conn.execute("SELECT 1 FROM app.webhook_subscriptions WHERE id = %s FOR KEY SHARE", (held,))
            locked.set()
            release.wait(held_s)
            conn.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        began = time.monotonic()
        result = seal_stored_secrets(pool=app_pool, control_pool=control_pool, max_tenants=1_000_000)
        took = time.monotonic() - began
        assert took < held_s - 3, f"the run waited {took:.1f} s for the locked row"
        assert result.failed_tenants >= 1 and not _sealed_now(tenants.stored(tenant)["subscriptions"][held])
    finally:
        release.set()
        holder.join()
    seal_stored_secrets(pool=app_pool, control_pool=control_pool, max_tenants=1_000_000)
    assert _sealed_now(tenants.stored(tenant)["subscriptions"][held])
