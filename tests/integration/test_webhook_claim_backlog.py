# intent_ref: platform.events
"""A webhook claim's cost is bounded by the tenant's enabled subscriptions, not by its backlog of pending deliveries
(ADR 0030), and it keeps its order: only each queue's head, only when due, least recently sent to first."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest

from shared.db.session import tenant_transaction
from shared.events import webhook_store
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import Receiver, local, tenant  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration
BACKLOG = 20_000


class _Undo(Exception):
    """Ends a tenant transaction whose writes (an analysed claim's) must not stay."""


def _subscribe(api: ApiHarness, name: str, count: int) -> tuple[UUID, list[UUID]]:
    handle, headers = tenant(api, name)
    body = {"url": Receiver().url, "event_types": ["*"]}
    made = [api.client.post("/api/v1/webhooks", json=body, headers=headers) for _ in range(count)]
    assert all(r.status_code == 201 for r in made), [r.text for r in made]
    return handle.id, [UUID(r.json()["id"]) for r in made]


@pytest.fixture
def cleanup(api: ApiHarness) -> Iterator[list[UUID]]:
    """Tenants whose deliveries are removed after the test: a backlog left behind slows every later finder of due
    tenants, and the runtime deletes no delivery (migration 0046)."""
    tenants: list[UUID] = []
    yield tenants
    with psycopg.connect(api.admin_url, dbname="quantum") as admin:
        for tenant_id in tenants:
            admin.execute("DELETE FROM app.webhook_deliveries WHERE tenant_id = %s", (tenant_id,))


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _read(node: dict[str, Any]) -> float:
    """The rows a node read over all its loops: those it returned and those its filters dropped."""
    per_loop = (
        node["Actual Rows"] + node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    )
    return float(per_loop * node["Actual Loops"])


@pytest.mark.parametrize("history", [0, BACKLOG // 4])
def test_a_claim_reads_one_head_per_subscription_whatever_the_backlog(
    api: ApiHarness, local: None, cleanup: list[UUID], history: int
) -> None:
    tenant_id, subscriptions = _subscribe(api, f"hooks-claim-backlog-{history}", 4)
    cleanup.append(tenant_id)
    busy, sparse = subscriptions[:-1], subscriptions[-1]
    with psycopg.connect(api.admin_url, dbname="quantum") as admin:
        # `history` deliveries sent long ago, then a backlog behind receivers that answer slowly, every delivery
        # due, spread over all subscriptions but the last, whose one pending delivery came last: a head found by
        # walking the tenant's deliveries in id order would read all of them.
        admin.execute(
            "INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload, state)"
            " SELECT %s, (%s::uuid[])[1 + g %% %s], 'm' || g, 'test.backlog', '{}',"
            " CASE WHEN g <= %s THEN 'delivered' ELSE 'pending' END FROM generate_series(1, %s) g",
            (tenant_id, busy, len(busy), history, BACKLOG),
        )
        admin.execute(
            "INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload)"
            " VALUES (%s, %s, 'last', 'test.backlog', '{}')",
            (tenant_id, sparse),
        )
        admin.commit()
        admin.execute("ANALYZE app.webhook_deliveries")
        heads = admin.execute(
            "SELECT min(id) FROM app.webhook_deliveries WHERE tenant_id = %s AND state = 'pending'"
            " GROUP BY subscription_id",
            (tenant_id,),
        ).fetchall()

    plan: dict[str, Any] = {}
    with pytest.raises(_Undo), tenant_transaction(tenant_id) as conn:
        explained = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + webhook_store._CLAIM_HEADS, (50, 60)).fetchone()
        assert explained is not None
        plan = explained["QUERY PLAN"][0]["Plan"]
        raise _Undo  # the analysed claim held the heads: given back

    nodes = list(_nodes(plan))
    deliveries = [n for n in nodes if n.get("Relation Name") == "webhook_deliveries"]
    assert deliveries, plan
    # Each read of the deliveries is one row per subscription (its head, the head locked, the head claimed), never
    # the backlog: no scan of every pending row, and no sort of them.
    assert all(n["Node Type"] != "Seq Scan" for n in deliveries), plan
    assert all(_read(n) <= len(subscriptions) for n in deliveries), [(n["Node Type"], _read(n)) for n in deliveries]
    sorts = [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")]
    assert all(n["Actual Rows"] * n["Actual Loops"] <= len(subscriptions) for n in sorts), plan
    # What the claim would have taken: every subscription's head.
    with tenant_transaction(tenant_id) as conn:
        claimed = webhook_store.claim_due(conn, tenant_id, limit=50, hold_s=60)
    assert sorted(c.id for c in claimed) == sorted(row[0] for row in heads)


def test_a_claim_takes_due_heads_only_least_recently_sent_to_first(
    api: ApiHarness, local: None, cleanup: list[UUID]
) -> None:
    tenant_id, made = _subscribe(api, "hooks-claim-order", 5)
    cleanup.append(tenant_id)
    waits, recent, never, old, disabled = made
    with psycopg.connect(api.admin_url, dbname="quantum") as admin:
        for subscription, last_sent in ((recent, "1 minute"), (old, "1 hour"), (waits, "2 hours")):
            admin.execute(
                "UPDATE app.webhook_subscriptions SET last_sent_at = clock_timestamp() - %s::interval WHERE id = %s",
                (last_sent, subscription),
            )
        admin.execute("UPDATE app.webhook_subscriptions SET enabled = false WHERE id = %s", (disabled,))
        # Three deliveries each, due; `waits`'s head backs off, and its later deliveries, due, wait behind it.
        admin.execute(
            "INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload)"
            " SELECT %s, s, 'm' || g, 'test.order', '{}' FROM unnest(%s::uuid[]) s, generate_series(1, 3) g"
            " ORDER BY g, s",
            (tenant_id, made),
        )
        admin.execute(
            "UPDATE app.webhook_deliveries SET next_attempt_at = clock_timestamp() + interval '1 hour'"
            " WHERE id = (SELECT min(id) FROM app.webhook_deliveries WHERE subscription_id = %s)",
            (waits,),
        )
        heads: dict[UUID, int] = dict(
            admin.execute(
                "SELECT subscription_id, min(id) FROM app.webhook_deliveries WHERE tenant_id = %s"
                " GROUP BY subscription_id",
                (tenant_id,),
            ).fetchall()
        )

    with tenant_transaction(tenant_id) as conn:
        first = webhook_store.claim_due(conn, tenant_id, limit=2, hold_s=60)
    # Never sent to first, then the least recently sent to; the LIMIT leaves the most recent one for later.
    assert [(c.subscription_id, c.id) for c in first] == [(never, heads[never]), (old, heads[old])]
    with tenant_transaction(tenant_id) as conn:
        second = webhook_store.claim_due(conn, tenant_id, limit=50, hold_s=60)
        held = conn.execute(
            "SELECT bool_and(next_attempt_at > clock_timestamp() + interval '50 seconds') AS held"
            " FROM app.webhook_deliveries WHERE id = ANY(%s)",
            ([c.id for c in first + second],),
        ).fetchone()
    # The claimed heads are held past the send's timeout (not claimed again, and their next deliveries wait behind
    # them); the head that is not due holds back its due deliveries; the disabled subscription sends nothing.
    assert [(c.subscription_id, c.id) for c in second] == [(recent, heads[recent])]
    assert held == {"held": True}


def _finder_plan(admin: psycopg.Connection[Any]) -> dict[str, Any]:
    """The plan of the due-tenants finder's body as it runs, analysed (its parameters: 50 tenants, none held)."""
    row = admin.execute(
        "SELECT prosrc FROM pg_proc WHERE oid = 'app.webhook_due_tenants(integer, uuid[])'::regprocedure"
    ).fetchone()
    assert row is not None
    body = row[0].replace("max_tenants", "50").replace("held_tenants", "'{}'::uuid[]")
    explained = admin.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + body).fetchone()
    assert explained is not None
    plan: dict[str, Any] = explained[0][0]["Plan"]
    return plan


def test_the_finder_of_due_tenants_reads_one_head_per_subscription_whatever_the_backlog(
    api: ApiHarness, local: None, cleanup: list[UUID]
) -> None:
    # About once a second it read and sorted every pending delivery of every tenant: 60,000 behind one tenant's slow
    # receivers cost every tenant's Postgres each time.
    tenant_id, subscriptions = _subscribe(api, "hooks-finder-backlog", 3)
    cleanup.append(tenant_id)
    with psycopg.connect(api.admin_url, dbname="quantum") as admin:
        admin.execute(
            "INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload)"
            " SELECT %s, (%s::uuid[])[1 + g %% %s], 'm' || g, 'test.backlog', '{}' FROM generate_series(1, %s) g",
            (tenant_id, subscriptions, len(subscriptions), BACKLOG),
        )
        admin.commit()
        admin.execute("ANALYZE app.webhook_deliveries")
        enabled = admin.execute("SELECT count(*) FROM app.webhook_subscriptions WHERE enabled").fetchone()
        assert enabled is not None
        nodes = list(_nodes(_finder_plan(admin)))
        found = admin.execute("SELECT * FROM app.webhook_due_tenants(50, '{}')").fetchall()
    deliveries = [n for n in nodes if n.get("Relation Name") == "webhook_deliveries"]
    assert deliveries and all(n["Node Type"] != "Seq Scan" for n in deliveries), nodes
    # One head per enabled subscription of every tenant, whatever the backlog behind them.
    assert all(_read(n) <= enabled[0] for n in deliveries), [(n["Node Type"], _read(n)) for n in deliveries]
    assert (tenant_id,) in found
