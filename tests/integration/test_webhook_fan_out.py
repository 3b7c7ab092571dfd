# intent_ref: platform.events
"""The relay's webhook fan-out is one statement for a whole batch, whatever its events and the tenant's subscriptions
(ADR 0030): it wrote a row per event and subscription, each its own statement, in the relay's transaction, and 100
events to 2,000 subscriptions held every other tenant's events and webhooks for half a minute. What it writes is what
the row-by-row fan-out wrote: the same matching, the same dedup, the same payloads, the same order per subscription
and the same bound on a stalled subscription's backlog (the events past it counted on the subscription)."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared.db.session import tenant_transaction
from shared.events import webhook_store, webhooks
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import Receiver, local, tenant  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration
BOUND = 3
AFTER = 3


class _Counting:
    """A connection that counts the statements sent through it; it offers `execute` alone (no cursor, no
    `executemany`, no pipeline), so every statement the fan-out sends is counted here."""

    def __init__(self, conn: webhook_store.Conn) -> None:
        self._conn = conn
        self.statements = 0

    def execute(self, query: Any, params: Any = None) -> Any:
        self.statements += 1
        return self._conn.execute(query, params)


# Each subscription: its types, enabled, consecutive failures, pending deliveries (beside one delivered, which no
# bound counts), and whether one of the batch's events is recorded for it already.
SUBSCRIPTIONS: dict[str, tuple[list[str], bool, int, int, bool]] = {
    "all-healthy-long-backlog": (["*"], True, 0, BOUND + 2, False),
    "step-failed-healthy": (["step.failed"], True, 0, 0, False),
    "two-types-disabled-room-1": (["step.failed", "execution.failed"], False, 0, BOUND - 1, False),
    "all-failing-not-long": (["*"], True, AFTER - 1, BOUND, False),
    "all-failing-long-room-2-one-recorded": (["*"], True, AFTER, 0, True),
    "intent-archived-healthy": (["intent.archived"], True, 0, 0, False),
    "all-disabled-full": (["*"], False, 0, BOUND, False),
    "unwanted-disabled-full": (["webhook.disabled"], False, 0, BOUND, False),
    "all-healthy-one-recorded": (["*"], True, 0, 0, True),
}
TYPES = ["step.failed", "execution.failed", "step.failed", "intent.archived", "execution.failed"]


def _events() -> list[dict[str, Any]]:
    """A batch as the relay hands it over (`relay.envelope`'s body)."""
    return [
        {
            "id": str(uuid4()),
            "type": event_type,
            "time": "2026-12-07T12:00:00+00:00",
            "tenant_id": "t",
            "subject": f"tests/{n}",
            "data": {"n": n, "nested": {"list": [n, None, "é"]}},
        }
        for n, event_type in enumerate(TYPES)
    ]


def _reference(
    subscriptions: dict[UUID, tuple[list[str], bool, int, int, bool]], events: list[dict[str, Any]], recorded: str
) -> tuple[list[tuple[UUID, str]], dict[UUID, int]]:
    """What the row-by-row fan-out wrote, in its order (event by event, subscriptions in id order), and the events
    each stalled subscription was left without: `recorded` is the event recorded for some of them already."""
    room = {
        sid: BOUND - pending - has_recorded  # the event recorded already is pending too
        for sid, (_, enabled, failures, pending, has_recorded) in subscriptions.items()
        if not enabled or failures >= AFTER
    }
    written: list[tuple[UUID, str]] = []
    dropped = dict.fromkeys(subscriptions, 0)
    for event in events:
        for sid in sorted(subscriptions):
            types, _, _, _, has_recorded = subscriptions[sid]
            if event["type"] not in types and "*" not in types:
                continue
            if has_recorded and event["id"] == recorded:
                continue  # its conflict: nothing written, no room taken
            if sid in room:
                if room[sid] <= 0:
                    dropped[sid] += 1
                    continue
                room[sid] -= 1
            written.append((sid, event["id"]))
    return written, dropped


def _prepare(tenant_id: UUID, names: dict[str, UUID], recorded: dict[str, Any]) -> None:
    """Each subscription's state and backlog as SUBSCRIPTIONS says, through the runtime's own grants."""
    with tenant_transaction(tenant_id) as conn:
        for name, (_, enabled, failures, pending, has_recorded) in SUBSCRIPTIONS.items():
            sid = names[name]
            conn.execute(
                "UPDATE app.webhook_subscriptions SET enabled = %s, consecutive_failures = %s WHERE id = %s",
                (enabled, failures, sid),
            )
            for n in range(pending + 1):
                conn.execute(
                    "INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload)"
                    " VALUES (app.current_tenant_id(), %s, %s, 'test.old', '{}')",
                    (sid, f"old-{n}"),
                )
            conn.execute(
                "UPDATE app.webhook_deliveries SET state = 'delivered' WHERE subscription_id = %s"
                " AND message_id = 'old-0'",
                (sid,),
            )
            if has_recorded:
                conn.execute(
                    "INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload)"
                    " VALUES (app.current_tenant_id(), %s, %s, %s, %s)",
                    (sid, recorded["id"], recorded["type"], Jsonb(recorded)),
                )


def test_the_fan_out_is_one_statement_and_writes_what_the_row_by_row_one_wrote(
    api: ApiHarness, local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook_store, "STALLED_BACKLOG_MAX", BOUND)
    monkeypatch.setattr(webhook_store, "STALLED_AFTER_FAILURES", AFTER)
    handle, headers = tenant(api, "hooks-fan-out-one-statement")
    url = Receiver().url
    names: dict[str, UUID] = {}
    for name, (types, *_) in SUBSCRIPTIONS.items():
        made = api.client.post("/api/v1/webhooks", json={"url": url, "event_types": types}, headers=headers)
        assert made.status_code == 201, made.text
        names[name] = UUID(made.json()["id"])
    events = _events()
    recorded = events[1]  # execution.failed, which `*` subscriptions want
    _prepare(handle.id, names, recorded)
    before = {sid: _log(handle.id, sid) for sid in names.values()}

    with tenant_transaction(handle.id) as conn:
        counting = _Counting(conn)
        added = webhook_store.fan_out(counting, events)  # type: ignore[arg-type]  # the counting stand-in
    assert counting.statements == 1  # row by row: 1 + a count per stalled subscription + a row per delivery (25 here)

    by_id = {sid: SUBSCRIPTIONS[name] for name, sid in names.items()}
    written, dropped = _reference(by_id, events, recorded["id"])
    assert added == len(written)
    payloads = {event["id"]: event for event in events}
    for name, sid in names.items():
        new = _log(handle.id, sid)[len(before[sid]) :]
        assert [row[0] for row in new] == [e for s, e in written if s == sid], name  # the same events, in order
        assert all(row[1] == payloads[row[0]]["type"] and row[2] == payloads[row[0]] for row in new), name
        shown = api.client.get(f"/api/v1/webhooks/{sid}", headers=headers).json()
        assert shown["dropped_events"] == dropped[sid], name
    assert sum(dropped.values()) == 10  # the two stalled ones with room left 3 and 2, the full one all five


def _log(tenant_id: UUID, subscription_id: UUID) -> list[tuple[str, str, Any]]:
    """The subscription's deliveries as (message_id, event_type, payload), oldest first (the order they are sent)."""
    with tenant_transaction(tenant_id) as conn:
        rows = conn.execute(
            "SELECT message_id, event_type, payload FROM app.webhook_deliveries WHERE subscription_id = %s ORDER BY id",
            (subscription_id,),
        ).fetchall()
    return [(row["message_id"], row["event_type"], row["payload"]) for row in rows]


def test_a_subscription_is_stalled_from_its_heads_nth_failure_about_43_minutes_after_the_first() -> None:
    # The bound holds for an enabled subscription once its head has failed for long, not from its first failure; the
    # documented time (ADR 0030, `STALLED_AFTER_FAILURES`) is the retries' schedule up to that failure.
    waited = sum(webhooks.backoff_s(n) for n in range(1, webhook_store.STALLED_AFTER_FAILURES))
    assert 40 * 60 <= waited <= 45 * 60, waited


def test_an_event_twice_in_a_batch_takes_a_stalled_subscriptions_room_once(
    api: ApiHarness, local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Numbered before its conflict was met, an event's second copy took a place in a stalled subscription's room: with
    # room for 2, [a, a, b] recorded a alone and counted b dropped; row by row, the copy met its conflict and took none.
    monkeypatch.setattr(webhook_store, "STALLED_BACKLOG_MAX", BOUND)
    handle, headers = tenant(api, "hooks-fan-out-twice")
    url = Receiver().url
    made = [
        api.client.post("/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=headers).json()["id"]
        for _ in range(2)
    ]
    parked, live = UUID(made[0]), UUID(made[1])
    assert api.client.patch(f"/api/v1/webhooks/{parked}", json={"enabled": False}, headers=headers).is_success
    with tenant_transaction(handle.id) as conn:
        conn.execute(
            "INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload)"
            " VALUES (app.current_tenant_id(), %s, 'old', 'test.old', '{}')",
            (parked,),
        )  # one pending: room for 2
    a, b = _events()[:2]
    with tenant_transaction(handle.id) as conn:
        added = webhook_store.fan_out(conn, [a, dict(a), b])
    assert added == 4
    assert [row[0] for row in _log(handle.id, parked)] == ["old", a["id"], b["id"]]
    assert [row[0] for row in _log(handle.id, live)] == [a["id"], b["id"]]
    shown = api.client.get(f"/api/v1/webhooks/{parked}", headers=headers).json()
    assert shown["dropped_events"] == 0


def test_the_fan_out_reads_and_counts_on_the_transactions_tenants_subscriptions_alone_also_past_rls(
    api: ApiHarness, local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The subscriptions were read, locked and counted on under RLS alone. Run by a role RLS does not hold (the
    # database's owner here), another tenant's subscriptions were matched too: their deliveries, written under this
    # tenant, failed the foreign key and the relay's transaction with them.
    monkeypatch.setattr(webhook_store, "STALLED_BACKLOG_MAX", 0)
    url = Receiver().url
    ids: dict[str, UUID] = {}
    for name in ("mine", "other"):
        handle, headers = tenant(api, f"hooks-fan-out-tenant-{name}")
        ids[name] = handle.id
        for enabled in (True, False):  # a healthy one, and a disabled one with no room at all
            sid = api.client.post("/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=headers)
            assert sid.status_code == 201, sid.text
            if not enabled:
                link = f"/api/v1/webhooks/{sid.json()['id']}"
                assert api.client.patch(link, json={"enabled": False}, headers=headers).is_success
    events = _events()
    with psycopg.connect(api.admin_url, dbname="quantum", row_factory=dict_row) as owner:
        owner.execute("SELECT app.pin_tenant(%s)", (ids["mine"],))
        added = webhook_store.fan_out(owner, events)
        rows = owner.execute(
            "SELECT s.tenant_id, s.enabled, s.dropped_events, count(d.id) AS logged FROM app.webhook_subscriptions s"
            " LEFT JOIN app.webhook_deliveries d ON d.subscription_id = s.id WHERE s.tenant_id = ANY (%s)"
            " GROUP BY s.tenant_id, s.id",
            (list(ids.values()),),
        ).fetchall()
        owner.rollback()
    assert added == len(events)
    seen = sorted(
        (row["tenant_id"] == ids["mine"], row["enabled"], row["dropped_events"], row["logged"]) for row in rows
    )
    assert seen == [(False, False, 0, 0), (False, True, 0, 0), (True, False, len(events), 0), (True, True, 0, 5)]
