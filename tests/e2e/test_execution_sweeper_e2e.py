# intent_ref: platform.execution
"""The stuck-execution sweeper on a devhost: a start whose request died after recording it is started by the
sweeper and completes (its side effect once); an execution whose orchestration was terminated ends failed and
gives its quota slot back. Time is not waited out: the stale claim and the quiet period are backdated in the rows,
and the outcome is polled for within a generous deadline (the sweeper runs every 30 s).

Its own module and devhost, like the crash test: two hosts on one database would share the hubs' checkpoints.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine.start import StartRequest, start_execution
from shared.tenants.repository import get_tenant
from tests.e2e.test_executions_e2e import (
    AUTHOR,
    Platform,
    SideEffects,
    _set_quota,
    create_intent,
    detail,
    execute,
    follow,
    http,
    platform,
    pytestmark,
    side_effects,
    steps_of,
)

__all__ = ["platform", "pytestmark", "side_effects"]

SWEEP_DEADLINE_S = 150.0  # the 30 s schedule, a run that is busy, and a slow shared machine
_BACKDATE_CLAIM = "UPDATE app.executions SET start_claimed_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"
_BACKDATE_UPDATE = "UPDATE app.executions SET updated_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"


@pytest.fixture(scope="module")
def app_pool(pg: Any, azurite: Any) -> Iterator[ConnectionPool[Any]]:
    """The app's own login, for recording a start the way the execute route does (settings as the app has)."""
    from shared.config import get_settings
    from shared.db.pool import build_pool, close_pool

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QP_DATABASE_URL", pg.app_url)
        mp.setenv("QP_DATABASE_CONTROL_URL", pg.control_url)
        mp.setenv("QP_BLOB_CONNECTION_STRING", azurite.connection_string)
        # The devhost opens private networks for local development; the start re-validates the definition with it.
        mp.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "true")
        get_settings.cache_clear()
        pool = build_pool(pg.app_url, get_settings(), min_size=1)
        yield pool
        pool.close()
        close_pool()
        get_settings.cache_clear()


def _tenant_id(pg: Any, name: str) -> uuid.UUID:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        row = conn.execute("SELECT id FROM app.tenants WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def _until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + SWEEP_DEADLINE_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"the sweeper did not {what} within {SWEEP_DEADLINE_S} s")


def test_a_start_whose_request_died_is_started_by_the_sweeper_and_runs_once(
    platform: Platform, side_effects: SideEffects, app_pool: ConnectionPool[Any], pg: Any
) -> None:
    name = f"swept-{uuid.uuid4().hex[:6]}"
    intent = create_intent(platform, [{"id": "call", **http(side_effects, name)}])
    tenant_id = _tenant_id(pg, "contoso")
    # What a request that died between its commit and starting the orchestration leaves behind: the row, pending,
    # holding a start claim that is long stale (backdated instead of waited out).
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        tenant = get_tenant(conn, tenant_id)
        assert tenant is not None
        recorded = start_execution(
            conn,
            tenant.facts(),
            StartRequest(intent_id=uuid.UUID(intent), requester=Requester("e2e", frozenset(), app_only=False)),
            max_concurrent=1000,
            authorize=lambda _item: None,
        )
        conn.execute(_BACKDATE_CLAIM, (recorded.execution.id,))
    execution_id = str(recorded.execution.id)
    assert detail(platform, execution_id)["status"] == "pending"

    _until(lambda: detail(platform, execution_id)["status"] != "pending", "start the stalled execution")
    status, events = follow(platform, execution_id)
    assert status == "succeeded"
    assert len(side_effects.named(name)) == 1
    assert [e["type"] for e in events].count("execution_started") == 1
    assert steps_of(detail(platform, execution_id))["call"]["state"] == "succeeded"


def test_an_execution_whose_orchestration_was_terminated_ends_failed_and_frees_its_slot(
    platform: Platform, pg: Any
) -> None:
    _set_quota(platform, "fabrikam", 1)
    headers = platform.headers(AUTHOR, tenant="fabrikam")
    try:
        body = {
            "name": f"swept-{uuid.uuid4().hex[:6]}",
            "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 3600}]},
        }
        intent = httpx.post(f"{platform.base}/api/v1/intents", json=body, headers=headers).json()["id"]
        first = execute(platform, intent, {}, headers)
        assert first.status_code == 202, first.text
        execution_id = first.json()["execution_id"]
        reader = platform.headers(["Intent.Reader"], tenant="fabrikam")

        def view(of: str = execution_id) -> dict[str, Any]:
            return dict(httpx.get(f"{platform.base}/api/v1/executions/{of}", headers=reader).json())

        _until(lambda: steps_of(view())["pause"]["state"] == "running", "see the wait start")
        assert execute(platform, intent, {}, headers).status_code == 429  # the one slot is held

        instance = f"{platform.base}/runtime/webhooks/durabletask/instances/{execution_id}"
        key = platform.host.key_header
        terminated = httpx.post(f"{instance}/terminate", params={"reason": "operator stop"}, headers=key)
        assert terminated.status_code == 202, terminated.text
        _until(
            lambda: httpx.get(instance, headers=key).json().get("runtimeStatus") == "Terminated", "see the termination"
        )
        assert view()["status"] == "running"  # nothing recorded the end
        with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
            conn.execute(_BACKDATE_UPDATE, (execution_id,))  # quiet for ten minutes, instead of waiting them out

        ended = _until(lambda: (lambda v: v if v["status"] != "running" else None)(view()), "end the execution")
        assert ended["status"] == "failed"
        assert ended["error"] == "orchestration was terminated: operator stop"
        events = httpx.get(
            f"{platform.base}/api/v1/executions/{execution_id}/events", params={"after": 0}, headers=reader
        ).json()["items"]
        assert (events[-1]["type"], events[-1]["data"]["error"]) == ("execution_failed", ended["error"])

        again = execute(platform, intent, {}, headers)
        assert again.status_code == 202, again.text  # its slot is free again
        next_id = again.json()["execution_id"]
        httpx.post(f"{platform.base}/api/v1/executions/{next_id}/cancel", headers=headers)
        _until(lambda: view(next_id)["status"] == "cancelled", "let the next execution be cancelled")
    finally:
        _set_quota(platform, "fabrikam", None)
