# intent_ref: platform.execution
"""Executions and their events on the real database: state machine, gap-free numbering, isolation, API, long poll."""

from __future__ import annotations

import hashlib
import itertools
import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.tenants.offboarding import EXPORTED_TABLES, TENANT_TABLES
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]

# How to reach each status from pending by legal moves only.
_PATHS: dict[repo.Status, list[repo.Status]] = {
    "pending": [],
    "running": ["running"],
    "waiting": ["running", "waiting"],
    "succeeded": ["running", "succeeded"],
    "failed": ["failed"],
    "compensating": ["running", "compensating"],
    "cancelled": ["cancelled"],
}


@pytest.fixture(scope="module", autouse=True)
def _tenants(api: ApiHarness) -> None:
    api.provision("alpha")
    api.provision("beta")


def _intent(pool: ConnectionPool[Any], tenant_id: uuid.UUID) -> uuid.UUID:
    """An intent with version 1, written directly (the registry is not under test here)."""
    intent_id = uuid.uuid4()
    definition = {"target": "staging", "steps": []}
    with tenant_transaction(tenant_id, pool=pool) as conn:
        conn.execute(
            "INSERT INTO app.intents (tenant_id, id, name, created_by)"
            " VALUES (app.current_tenant_id(), %s, %s, 'test')",
            (intent_id, f"i-{intent_id.hex[:12]}"),
        )
        conn.execute(
            "INSERT INTO app.intent_versions (tenant_id, intent_id, version, definition, definition_sha256,"
            " created_by) VALUES (app.current_tenant_id(), %s, 1, %s, %s, 'test')",
            (intent_id, Jsonb(definition), hashlib.sha256(b"{}").hexdigest()),
        )
    return intent_id


def _execution(
    pool: ConnectionPool[Any],
    tenant_id: uuid.UUID,
    intent_id: uuid.UUID | None = None,
    path: list[repo.Status] | None = None,
    key: str | None = None,
) -> repo.Execution:
    intent_id = intent_id or _intent(pool, tenant_id)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        execution, _ = repo.create_execution(
            conn,
            execution_id=uuid.uuid4(),
            intent_id=intent_id,
            intent_version=1,
            target="staging",
            input={"version": "1.2.3"},
            requester=Requester("tester", frozenset(), app_only=False),
            idempotency_key=key,
        )
        for status in path or []:
            execution, _ = repo.transition(conn, execution.id, status)
    return execution


def _events(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[repo.ExecutionEvent]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return repo.events_after(conn, execution_id, 0, 10_000)


# ---- state machine -----------------------------------------------------------------------------------------


def test_every_legal_transition_writes_exactly_one_event(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant = api.tenants["alpha"].id
    execution = _execution(app_pool, tenant)
    assert (execution.status, execution.last_event_seq, _events(app_pool, tenant, execution.id)) == ("pending", 0, [])
    moves: list[tuple[repo.Status, str]] = [
        ("running", "execution_started"),
        ("waiting", "execution_waiting"),
        ("running", "execution_resumed"),
        ("compensating", "execution_compensating"),
        ("failed", "execution_failed"),
    ]
    for number, (status, event_type) in enumerate(moves, start=1):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            moved, seq = repo.transition(
                conn, execution.id, status, error="deploy failed" if status == "failed" else None
            )
        events = _events(app_pool, tenant, execution.id)
        assert (moved.status, seq, moved.last_event_seq) == (status, number, number)
        assert [e.seq for e in events] == list(range(1, number + 1))
        assert (events[-1].type, events[-1].data["to"]) == (event_type, status)
    assert moved.finished_at is not None and moved.error == "deploy failed"
    assert events[-1].data["error"] == "deploy failed"


def test_success_keeps_the_output(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant = api.tenants["alpha"].id
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        done, seq = repo.transition(conn, execution.id, "succeeded", output={"url": "https://app.example"})
    assert (done.status, done.output, seq, done.finished_at is not None) == (
        "succeeded",
        {"url": "https://app.example"},
        2,
        True,
    )
    assert [e.type for e in _events(app_pool, tenant, execution.id)] == ["execution_started", "execution_completed"]


def test_illegal_transitions_are_refused_and_change_nothing(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = api.tenants["alpha"].id
    intent_id = _intent(app_pool, tenant)
    illegal = [(a, b) for a, b in itertools.product(repo.STATUSES, repeat=2) if (a, b) not in repo.TRANSITIONS]
    assert ("succeeded", "running") in illegal and ("pending", "succeeded") in illegal
    for current, requested in illegal:
        execution = _execution(app_pool, tenant, intent_id, _PATHS[current])
        with pytest.raises(repo.IllegalTransitionError), tenant_transaction(tenant, pool=app_pool) as conn:
            repo.transition(conn, execution.id, requested)
        with tenant_transaction(tenant, pool=app_pool) as conn:
            after = repo.get_execution(conn, execution.id)
        assert (after.status, after.last_event_seq) == (current, len(_PATHS[current]))
        assert len(_events(app_pool, tenant, execution.id)) == len(_PATHS[current])


def test_seq_is_gap_free_under_concurrent_appenders(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant = api.tenants["alpha"].id
    execution = _execution(app_pool, tenant, path=["running"])
    threads, per_thread = 8, 15
    barrier = threading.Barrier(threads)
    seqs: list[int] = []
    errors: list[BaseException] = []

    def appender(worker: int) -> None:
        try:
            barrier.wait()
            for n in range(per_thread):
                # One transaction per event, so the appenders interleave as much as they can.
                with tenant_transaction(tenant, pool=app_pool) as conn:
                    seqs.append(repo.append_event(conn, execution.id, "step_started", f"s{worker}", {"n": n}))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=appender, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    total = 1 + threads * per_thread
    assert sorted(seqs) == list(range(2, total + 1))
    assert [e.seq for e in _events(app_pool, tenant, execution.id)] == list(range(1, total + 1))
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert repo.get_execution(conn, execution.id).last_event_seq == total


def test_a_rolled_back_append_leaves_no_gap(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant = api.tenants["alpha"].id
    execution = _execution(app_pool, tenant, path=["running"])
    with pytest.raises(RuntimeError), tenant_transaction(tenant, pool=app_pool) as conn:
        repo.append_event(conn, execution.id, "step_started", "build")
        raise RuntimeError("the activity crashed before commit")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert repo.append_event(conn, execution.id, "step_started", "build") == 2


def test_the_same_idempotency_key_returns_the_same_execution(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = api.tenants["alpha"].id
    first = _execution(app_pool, tenant, key="deploy-42")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        again, created = repo.create_execution(
            conn,
            execution_id=uuid.uuid4(),
            intent_id=first.intent_id,
            intent_version=1,
            target="staging",
            input={},
            requester=Requester("tester", frozenset(), app_only=False),
            idempotency_key="deploy-42",
        )
    assert (again.id, created) == (first.id, False)
    # Keys are per tenant: another tenant may use the same one.
    assert _execution(app_pool, api.tenants["beta"].id, key="deploy-42").id != first.id


# ---- isolation ---------------------------------------------------------------------------------------------


def test_another_tenants_execution_is_invisible_and_untouchable(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    alpha, beta = api.tenants["alpha"].id, api.tenants["beta"].id
    execution = _execution(app_pool, alpha, path=["running"])
    with tenant_transaction(beta, pool=app_pool) as conn:
        with pytest.raises(repo.ExecutionNotFoundError):
            repo.get_execution(conn, execution.id)
        assert repo.events_after(conn, execution.id, 0) == []
        assert all(row.id != execution.id for row in repo.list_executions(conn, limit=200)[0])
        with pytest.raises(repo.ExecutionNotFoundError):
            repo.append_event(conn, execution.id, "step_started")
        with pytest.raises(repo.ExecutionNotFoundError):
            repo.transition(conn, execution.id, "cancelled")
    assert [e.seq for e in _events(app_pool, alpha, execution.id)] == [1]


def test_another_tenants_execution_is_404_over_the_api(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    execution = _execution(app_pool, api.tenants["alpha"].id, path=["running"])
    own = api.client.get(f"/api/v1/executions/{execution.id}", headers=api.headers("alpha", READER))
    assert own.status_code == 200, own.text
    assert (own.json()["status"], own.json()["input"], own.json()["last_event_seq"]) == (
        "running",
        {"version": "1.2.3"},
        1,
    )
    for path in (f"/api/v1/executions/{execution.id}", f"/api/v1/executions/{execution.id}/events?after=0"):
        response = api.client.get(path, headers=api.headers("beta", READER))
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"


# ---- listing -----------------------------------------------------------------------------------------------


def test_listing_pages_newest_first_with_filters(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant = api.tenants["alpha"].id
    intent_id = _intent(app_pool, tenant)
    made = [_execution(app_pool, tenant, intent_id, ["running"] if n % 2 else []) for n in range(5)]
    headers = api.headers("alpha", READER)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"intent_id": str(intent_id), "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = api.client.get("/api/v1/executions", params=params, headers=headers).json()
        assert len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(e.id) for e in reversed(made)]
    running = api.client.get(
        "/api/v1/executions", params={"intent_id": str(intent_id), "status": "running"}, headers=headers
    ).json()["items"]
    assert [item["id"] for item in running] == [str(made[3].id), str(made[1].id)]
    window = {
        "intent_id": str(intent_id),
        "created_after": made[1].created_at.isoformat(),
        "created_before": made[4].created_at.isoformat(),
    }
    in_window = api.client.get("/api/v1/executions", params=window, headers=headers).json()["items"]
    assert [item["id"] for item in in_window] == [str(e.id) for e in reversed(made[1:4])]
    bad = api.client.get("/api/v1/executions", params={"cursor": "bm90LW91cnM"}, headers=headers)
    assert bad.status_code == 400, bad.text


# ---- events and the long poll --------------------------------------------------------------------------------


def test_events_resume_from_any_number(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant = api.tenants["alpha"].id
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        repo.append_event(conn, execution.id, "step_started", "build", {"attempt": 1})
        repo.append_event(conn, execution.id, "step_completed", "build", {"attempt": 1})
    url = f"/api/v1/executions/{execution.id}/events"
    body = api.client.get(url, params={"after": 1}, headers=api.headers("alpha", READER)).json()
    assert [(e["seq"], e["type"], e["step_id"]) for e in body["items"]] == [
        (2, "step_started", "build"),
        (3, "step_completed", "build"),
    ]
    assert (body["next_after"], body["status"]) == (3, "running")


def test_long_poll_returns_when_an_event_arrives(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant = api.tenants["alpha"].id
    execution = _execution(app_pool, tenant, path=["running"])
    responded = threading.Event()

    def producer() -> None:
        with tenant_transaction(tenant, pool=app_pool) as conn:
            repo.append_event(conn, execution.id, "step_started", "build")
        # Only a poll that ignored the first event and waited out its whole window would also see this one.
        if not responded.wait(20):
            with tenant_transaction(tenant, pool=app_pool) as conn:
                repo.append_event(conn, execution.id, "step_completed", "build")

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        response = api.client.get(
            f"/api/v1/executions/{execution.id}/events",
            params={"after": 1, "wait": 30},
            headers=api.headers("alpha", READER),
        )
    finally:
        responded.set()
        thread.join()
    assert response.status_code == 200, response.text
    assert [(e["seq"], e["type"]) for e in response.json()["items"]] == [(2, "step_started")]
    assert response.json()["next_after"] == 2


def test_long_poll_returns_empty_after_the_wait(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    execution = _execution(app_pool, api.tenants["alpha"].id, path=["running"])
    response = api.client.get(
        f"/api/v1/executions/{execution.id}/events",
        params={"after": 1, "wait": 0.5},
        headers=api.headers("alpha", READER),
    )
    assert response.status_code == 200, response.text
    assert (response.json()["items"], response.json()["next_after"]) == ([], 1)


def test_long_poll_on_a_finished_execution_answers_at_once(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    execution = _execution(app_pool, api.tenants["alpha"].id, path=["running", "succeeded"])
    body = api.client.get(
        f"/api/v1/executions/{execution.id}/events",
        params={"after": 2, "wait": 30},
        headers=api.headers("alpha", READER),
    ).json()
    assert (body["items"], body["status"], body["next_after"]) == ([], "succeeded", 2)


def test_wait_is_bounded(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    execution = _execution(app_pool, api.tenants["alpha"].id)
    response = api.client.get(
        f"/api/v1/executions/{execution.id}/events", params={"wait": 31}, headers=api.headers("alpha", READER)
    )
    assert response.status_code == 422, response.text


# ---- offboarding -------------------------------------------------------------------------------------------


def test_offboarding_erases_events_before_executions_and_exports_both() -> None:
    assert TENANT_TABLES.index("execution_events") < TENANT_TABLES.index("executions") < TENANT_TABLES.index("intents")
    assert {"executions", "execution_events"} <= set(EXPORTED_TABLES)


def test_an_appended_event_notifies_listeners_on_commit(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant = api.tenants["alpha"].id
    execution = _execution(app_pool, tenant, path=["running"])
    with psycopg.connect(api.app_url, autocommit=True) as listener:
        listener.execute("LISTEN execution_events")
        with tenant_transaction(tenant, pool=app_pool) as conn:
            repo.append_event(conn, execution.id, "step_started", "build")
        payloads = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    assert payloads == [f"{execution.id}:2"]  # migration 0016: the execution and the number, no tenant
