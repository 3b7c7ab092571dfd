# intent_ref: platform.ingress
"""A hub deleted and recreated numbers its events from the start again: a new event rejected at an old rejection's
place (partition and sequence number) gets a record of its own, final for its redeliveries (migration 0068, which
applies over the rows recorded before it); and the lookup of a recorded rejection takes no transaction of its own."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from shared.db.bootstrap import bootstrap
from shared.db.migrate import APP_MIGRATIONS, apply_migrations, discover
from shared.db.session import tenant_transaction
from shared.ingress import process
from shared.ingress.process import Outcome, process_batch, process_event, reference_of
from shared.ingress.request import INTENT_REQUESTS_HUB
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_ingress_launch import _validator
from tests.integration.test_ingress_rejections import NoOrchestrations, _intent
from tests.integration.test_ingress_review_fixes import _event, _sequence, _state
from tests.integration.test_start_service import TaskHub

pytestmark = pytest.mark.integration

_RECORDING = 68
"""The migration that records a rejection through `app.record_ingress_rejection`."""


def _ids(api: ApiHarness, tenant_id: uuid.UUID) -> list[tuple[uuid.UUID, datetime | None, str]]:
    """The tenant's rejections (id, enqueued time, instance), read as the admin, oldest first."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        rows = conn.execute(
            "SELECT id, enqueued_time, detail->>'instance' FROM app.ingress_rejections WHERE tenant_id = %s"
            " ORDER BY created_at",
            (tenant_id,),
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def test_a_new_event_rejected_at_an_old_rejections_place_is_recorded_and_final(api: ApiHarness) -> None:
    # The old hub's event was refused at this place; the recreated hub's event there is refused its quota. Its insert
    # kept the old row (the place alone was the key), so nothing recorded it: once the quota was freed its
    # redelivery was evaluated again and started, though it had been answered rejected.
    tenant = api.provision("recreated", quotas={"max_concurrent_executions": 1})
    intent_id = _intent(api, "recreated")
    place = _sequence()
    old = _event(api, "recreated", {"intent_id": intent_id, "idempotency_key": "old", "nope": 1}, place)
    assert asyncio.run(process_event(old, NoOrchestrations(), _validator(api))).reason == "invalid"
    [(old_id, _, _)] = _ids(api, tenant.id)

    running = _event(api, "recreated", {"intent_id": intent_id, "input": {}, "idempotency_key": "running"}, place + 1)
    assert asyncio.run(process_event(running, TaskHub(), _validator(api))).created
    assert old.enqueued_time is not None
    new = replace(
        _event(api, "recreated", {"intent_id": intent_id, "input": {}, "idempotency_key": "new"}, place),
        enqueued_time=old.enqueued_time + timedelta(minutes=5),
    )
    assert asyncio.run(process_event(new, NoOrchestrations(), _validator(api))).reason == "quota_exceeded"
    [(new_id, stamp, instance)] = _ids(api, tenant.id)
    # The new event's own record, under a reference of its own (the old event's named the old row).
    assert (stamp, new_id, instance) == (new.enqueued_time, reference_of(new), f"{INTENT_REQUESTS_HUB}/{new_id}")
    assert new_id != old_id

    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE app.executions SET status = 'succeeded' WHERE tenant_id = %s AND idempotency_key = 'running'",
            (tenant.id,),
        )
    # Redelivered with the quota free: answered by its record, never started.
    again = asyncio.run(process_event(new, NoOrchestrations(), _validator(api)))
    assert again == Outcome(new.event_id, reason="quota_exceeded")
    executions, rejections = _state(api, tenant.id)
    assert [key for key, _ in executions] == ["running"]
    assert [(key, reason) for key, reason, _ in rejections] == [("new", "quota_exceeded")]


class _Counted:
    """The ingress's own tenant transactions, counted (the start service's are its own)."""

    def __init__(self, real: Any) -> None:
        self.real, self.count = real, 0

    def __call__(self, *args: Any, **kwargs: Any) -> AbstractContextManager[Any]:
        self.count += 1
        opened: AbstractContextManager[Any] = self.real(*args, **kwargs)
        return opened


def test_the_rejection_lookup_takes_no_transaction_of_its_own(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    # It was one more tenant transaction for every event: now a start looks it up in the start's own transaction and
    # a rejection in the one that records it.
    tenant = api.provision("one-lookup", quotas={"max_concurrent_executions": 1})
    intent_id = _intent(api, "one-lookup")
    counted = _Counted(tenant_transaction)
    monkeypatch.setattr(process, "tenant_transaction", counted)
    base = _sequence()
    started = _event(api, "one-lookup", {"intent_id": intent_id, "input": {}, "idempotency_key": "a"}, base)
    assert asyncio.run(process_event(started, TaskHub(), _validator(api))).created
    assert counted.count == 0
    invalid = _event(api, "one-lookup", {"intent_id": intent_id, "idempotency_key": "b", "nope": 1}, base + 1)
    for _ in range(2):  # recorded once, and the redelivery answered in the transaction that finds it recorded
        assert asyncio.run(process_event(invalid, NoOrchestrations(), _validator(api))).reason == "invalid"
    assert counted.count == 2
    refused = _event(api, "one-lookup", {"intent_id": intent_id, "input": {}, "idempotency_key": "c"}, base + 2)
    assert asyncio.run(process_event(refused, NoOrchestrations(), _validator(api))).reason == "quota_exceeded"
    assert counted.count == 3
    # Redelivered with the quota free, in a batch and past a day: each path answers the recorded rejection, and
    # nothing starts nor is recorded again.
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("UPDATE app.executions SET status = 'succeeded' WHERE tenant_id = %s", (tenant.id,))
    outcomes = asyncio.run(process_batch([invalid, refused], NoOrchestrations(), _validator(api)))
    assert [outcome.reason for outcome in outcomes] == ["invalid", "quota_exceeded"]
    later = datetime.now(UTC) + timedelta(hours=25)
    stale = asyncio.run(process_event(refused, NoOrchestrations(), _validator(api), now=later))
    assert stale == Outcome(refused.event_id, reason="quota_exceeded")
    executions, rejections = _state(api, tenant.id)
    assert [key for key, _ in executions] == ["a"]
    assert [(key, reason) for key, reason, _ in rejections] == [("b", "invalid"), ("c", "quota_exceeded")]


@pytest.fixture()
def scratch(pg: Any) -> Iterator[str]:
    """A throwaway database of the platform's, bootstrapped on the session's server; its name."""
    name = f"mig_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _record(app_url: str, tenant: uuid.UUID | None, sequence: int, stamp: datetime, reason: str) -> bool:
    """One rejection recorded as the runtime records it, at partition 0, in `tenant`'s transaction (None: unpinned)."""
    with psycopg.connect(app_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_runtime")
        if tenant is not None:
            conn.execute("SELECT app.pin_tenant(%s)", (tenant,))
        row = conn.execute(
            "SELECT app.record_ingress_rejection(%s, %s, '0', %s, %s, %s, %s, NULL, NULL)",
            (uuid.uuid4(), INTENT_REQUESTS_HUB, sequence, stamp, reason, Jsonb({})),
        ).fetchone()
    assert row is not None
    return bool(row[0])


def test_the_migration_applies_over_recorded_rejections_and_replaces_an_old_hubs_row(
    pg: Any, scratch: str, tmp_path: Path
) -> None:
    urls = bootstrap(pg.admin_url, scratch)
    before = [m for m in discover(APP_MIGRATIONS) if m.version < _RECORDING]
    for migration in before:
        shutil.copy(migration.path, tmp_path / migration.path.name)
    apply_migrations(urls.owner, tmp_path)
    tenant, old_stamp = uuid.uuid4(), datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(urls.admin, dbname=scratch, autocommit=True) as admin:
        admin.execute("INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, 'old', %s)", (tenant, tenant))
        admin.execute(
            "INSERT INTO app.ingress_rejections (tenant_id, hub, partition_id, sequence_number, enqueued_time, reason,"
            " detail) SELECT %s, %s, '0', n, %s, 'invalid', '{}'::jsonb FROM generate_series(1, 3) AS n",
            (tenant, INTENT_REQUESTS_HUB, old_stamp),
        )
    for migration in discover(APP_MIGRATIONS):
        if migration.version >= _RECORDING:
            shutil.copy(migration.path, tmp_path / migration.path.name)
    assert f"{_RECORDING:04d}" in apply_migrations(urls.owner, tmp_path)[0]

    new_stamp = old_stamp + timedelta(days=200)
    assert not _record(urls.app, tenant, 1, old_stamp, "stale")  # the old event again: its row stands
    assert _record(urls.app, tenant, 2, new_stamp, "forbidden")  # a new event at its place: recorded, replacing it
    assert not _record(urls.app, tenant, 2, new_stamp, "forbidden")  # and recorded once
    with psycopg.connect(urls.admin, dbname=scratch) as admin:
        rows = admin.execute(
            "SELECT sequence_number, enqueued_time, reason FROM app.ingress_rejections ORDER BY sequence_number"
        ).fetchall()
    assert rows == [(1, old_stamp, "invalid"), (2, new_stamp, "forbidden"), (3, old_stamp, "invalid")]
    # The runtime still deletes nothing of the table itself, and records nothing without a pinned tenant.
    with psycopg.connect(urls.app, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_runtime")
        conn.execute("SELECT app.pin_tenant(%s)", (tenant,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM app.ingress_rejections")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _record(urls.app, None, 4, new_stamp, "forbidden")
