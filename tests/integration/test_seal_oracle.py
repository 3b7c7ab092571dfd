# intent_ref: platform.hardening
"""The cross-tenant finders answer the platform's own question and nothing of a tenant's data (migration 0039): the
sealing finder takes one key's whole prefix only, so the control plane cannot read a stored secret through it one
character at a time, and the stuck-execution finder cannot time a tenant's executions below the sweeper's floors."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction, tenant_transaction
from shared.sealing import SealedFor, Sealer
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_execution_sweeper import Tenant, _recorded

pytestmark = pytest.mark.integration

PLAIN_SECRET = "whsec_" + "Zk3q9PsecretVALUE"
KEY_A = Sealer("seal oracle test key A: " + "a" * 40)
KEY_B = Sealer("seal oracle test key B: " + "b" * 40)
_SUBSCRIBE = (
    "INSERT INTO app.webhook_subscriptions (tenant_id, id, url, event_types, secret)"
    " VALUES (%s, %s, 'https://example.com/h', '{x.y}', %s)"
)
_TO_SEAL = "SELECT t FROM app.tenants_with_secrets_to_seal(%s, 1000000) AS found (t)"
_STUCK = "SELECT t FROM app.execution_sweep_tenants(%s, %s, 1000000) AS stuck (t)"


def _subscribed(app_pool: ConnectionPool[Any], tenant_id: uuid.UUID, secret: str | None = None) -> None:
    """A subscription keeping `secret`, or (None) a secret sealed under key A."""
    subscription = uuid.uuid4()
    if secret is None:
        secret = KEY_A.seal(b"a signing secret", SealedFor("webhook-secret", tenant_id, str(subscription)))
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        conn.execute(_SUBSCRIBE, (tenant_id, subscription, secret))


def _found(conn: psycopg.Connection[Any], query: str, *args: object) -> set[uuid.UUID]:
    return {row["t"] for row in conn.execute(query, args).fetchall()}


def test_the_sealing_finder_takes_one_keys_whole_prefix_and_no_part_of_a_secret(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    plain, sealed = new_tenant(), new_tenant()
    _subscribed(app_pool, plain, PLAIN_SECRET)
    _subscribed(app_pool, sealed)
    key_a = KEY_A.current_prefix.split(".")[1]
    # Each was a step of reading a secret: the first characters of a plain one or of a sealed one's key id and body.
    probes = [
        "",
        "w",
        "whsec_Zk3q9P",
        PLAIN_SECRET,
        "qpsealed1.",
        "qpsealed1",
        f"qpsealed1.{key_a[:15]}",
        f"qpsealed1.{key_a}",
        f"{KEY_A.current_prefix}A",
        f"qpsealed1.{key_a.upper()}.",
        "qpsealed1.%.",
        f"qpsealed1.{key_a}.\n",
        None,
    ]
    try:
        with platform_transaction(pool=control_pool) as conn:
            for probe in probes:
                with pytest.raises(psycopg.errors.InvalidParameterValue), conn.transaction():
                    conn.execute(_TO_SEAL, (probe,))
            # The one question it answers: is a value sealed under this key? The sealing timer's, unchanged.
            under_a = _found(conn, _TO_SEAL, KEY_A.current_prefix)
            under_b = _found(conn, _TO_SEAL, KEY_B.current_prefix)
    finally:
        # A value sealed under a key no process has would fail every later sealing run of the session's database.
        for tenant_id in (plain, sealed):
            with tenant_transaction(tenant_id, pool=app_pool) as conn:
                for row in conn.execute("SELECT id FROM app.webhook_subscriptions").fetchall():
                    conn.execute("SELECT app.delete_webhook_subscription(%s)", (row["id"],))
    assert plain in under_a and sealed not in under_a
    assert {plain, sealed} <= under_b


def test_the_sealing_finder_stays_the_control_planes_alone(pg: Any) -> None:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        row = conn.execute(
            "SELECT p.prosecdef, p.proconfig, pg_get_userbyid(p.proowner),"
            " ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END"
            "       FROM aclexplode(p.proacl) a WHERE a.privilege_type = 'EXECUTE' ORDER BY 1)"
            " FROM pg_proc p WHERE p.oid = 'app.tenants_with_secrets_to_seal(text, integer)'::regprocedure"
        ).fetchone()
    assert row is not None
    definer, config, owner, executors = row
    assert (definer, config) == (True, ['search_path=""'])
    assert sorted(executors) == sorted([owner, "qp_platform"])


def test_the_sweep_finder_cannot_time_a_tenants_executions(
    api: ApiHarness, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    fresh, stalled = Tenant(api), Tenant(api)
    _recorded(app_pool, fresh.id, fresh.intent, stale=False)  # claimed a moment ago: its starter may still be alive
    _recorded(app_pool, stalled.id, stalled.intent)  # claimed ten minutes ago
    with platform_transaction(pool=control_pool) as conn:
        # Seconds below the sweeper's floors would tell when a tenant started something; they count as the floors.
        for stale_start_s, quiet_s in [(0.0, 0.0), (-1e9, -1e9), (59.0, 1.0)]:
            found = _found(conn, _STUCK, stale_start_s, quiet_s)
            assert fresh.id not in found and stalled.id in found
        # Infinity and NaN count as the ceilings (a day) rather than failing.
        assert stalled.id not in _found(conn, _STUCK, float("inf"), float("nan"))
        # The sweeper's own seconds answer as they did.
        found = _found(conn, _STUCK, 60.0, 300.0)
    assert fresh.id not in found and stalled.id in found
