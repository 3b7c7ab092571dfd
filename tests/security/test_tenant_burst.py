# intent_ref: platform.hardening
"""One tenant's burst never stalls another: no request waits on its own pool, a tenant's requests in flight are
bounded per process, and over the bound the answer is 429 `tenant-busy` (over the pool, 503), problem+json
with Retry-After."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devhost.child import PROJECT_ROOT, DevhostProcess, free_port
from devhost.identity import mint_token_cli
from shared.api.admission import Admission, Permit, PoolShare, TenantGate, get_admission, idle, tenant_limit
from shared.api.problems import ProblemError
from shared.api.security import RequestContext, authorize, record_mutation, tenant_resource
from shared.auth.principal import Principal
from shared.config import get_settings
from shared.db.pool import close_pool
from shared.db.session import NestedBorrowError, platform_transaction, tenant_transaction, tenant_write
from shared.observability import metrics
from shared.policy.actions import Action
from shared.policy.tenant_policies import policy_cache
from shared.ratelimit import RateLimit, take_tenant_token
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness

READER = ["Intent.Reader"]


# --- in process: no request waits on its own pool --------------------------------------------------------------


@pytest.fixture
def one_connection_pools(pg: Any) -> Iterator[None]:
    """The process-wide pools with ONE tenant connection: any second borrow while it is held can never succeed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QP_DATABASE_URL", pg.app_url)
        mp.setenv("QP_DATABASE_CONTROL_URL", pg.control_url)
        mp.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
        mp.setenv("QP_DATABASE_POOL_MAX", "1")
        get_settings.cache_clear()
        close_pool()
        yield
        close_pool()
        get_settings.cache_clear()


def _audit(pg: Any, request_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        return [
            (row[0], row[1])
            for row in conn.execute(
                "SELECT action, decision FROM app.audit_events WHERE request_id = %s ORDER BY occurred_at",
                (request_id,),
            )
        ]


def _context(tenant_id: uuid.UUID, roles: set[str]) -> RequestContext:
    with platform_transaction() as conn:
        tenant = get_tenant(conn, tenant_id)
    assert tenant is not None
    principal = Principal(
        tenant_id=tenant.id,
        entra_tenant_id=tenant.entra_tenant_id,
        object_id=uuid.uuid4(),
        roles=frozenset(roles),
        scopes=frozenset(),
        app_only=False,
    )
    return RequestContext(principal, tenant, f"req-{uuid.uuid4().hex[:12]}")


@pytest.mark.integration
def test_a_second_borrow_from_a_held_pool_fails_at_once(
    one_connection_pools: None, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    with tenant_transaction(tenant) as conn:
        # Without the guard each of these would wait the pool's whole timeout and then fail as "no connection".
        with pytest.raises(NestedBorrowError):
            with tenant_transaction(tenant):
                pass
        with pytest.raises(NestedBorrowError):
            with tenant_write(tenant):
                pass
        with pytest.raises(NestedBorrowError):
            take_tenant_token(tenant, RateLimit(capacity=10, refill_per_second=1))
        with platform_transaction() as control:  # the control plane's pool is another pool: it cannot wait on this
            assert control.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        assert conn.execute("SELECT app.current_tenant_id() AS tenant").fetchone() == {"tenant": tenant}
    # The one connection went back: the next borrower gets it.
    assert take_tenant_token(tenant, RateLimit(capacity=10, refill_per_second=1)).allowed


@pytest.mark.integration
def test_decisions_inside_a_transaction_borrow_no_second_connection_and_are_all_recorded(
    pg: Any, one_connection_pools: None, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    reader = _context(tenant, {"Intent.Reader"})
    resource = tenant_resource("Intent", uuid.uuid4(), tenant, target="staging", labels={})
    policy_cache.forget(tenant)  # the decision reads the tenant's policies: inside the open transaction

    with tenant_transaction(tenant) as conn:
        authorize(reader, Action.INTENT_READ, resource)
        # The allow record is in the caller's own transaction (seen there before it commits).
        assert conn.execute(
            "SELECT count(*) AS n FROM app.audit_events WHERE request_id = %s", (reader.request_id,)
        ).fetchone() == {"n": 1}
    assert _audit(pg, reader.request_id) == [("intent.read", "allow")]

    # A decision is recorded even when the caller's transaction then rolls back: on its own, after the release.
    rolled = _context(tenant, {"Intent.Reader"})
    with pytest.raises(LookupError), tenant_transaction(tenant):
        authorize(rolled, Action.INTENT_READ, resource)
        raise LookupError("the operation failed after the decision")
    assert _audit(pg, rolled.request_id) == [("intent.read", "allow")]

    # A denial rolls the caller's transaction back and is written once the connection is free again.
    with pytest.raises(ProblemError) as refused, tenant_transaction(tenant):
        authorize(reader, Action.INTENT_CREATE, resource)
    assert refused.value.status == 403
    assert _audit(pg, reader.request_id) == [("intent.read", "allow"), ("intent.create", "deny")]

    # A mutation's record commits or rolls back with the mutation: nothing was changed, nothing is recorded.
    author = _context(tenant, {"Intent.Author"})
    with pytest.raises(LookupError), tenant_transaction(tenant) as conn:
        record_mutation(author, Action.INTENT_CREATE, resource, {"name": "x"}, conn=conn)
        raise LookupError("the mutation failed")
    assert _audit(pg, author.request_id) == []


# --- in process: the per-tenant bound ---------------------------------------------------------------------------


@pytest.mark.integration
def test_a_tenant_over_its_bound_hears_429_and_every_permit_comes_back(api: ApiHarness) -> None:
    busy = api.provision("busy")
    api.provision("calm")
    get_admission.cache_clear()  # sized from this app's settings, whatever ran before in this process
    admission = get_admission()
    assert admission.limit == tenant_limit(get_settings()) >= 1
    gate = admission.gate(busy.id)
    for _ in range(admission.limit):  # the tenant's bound, taken as by requests in progress
        assert gate.enter(0)
    try:
        refused = api.client.get("/api/v1/intents", headers=api.headers("busy", READER))
        other = api.client.get("/api/v1/intents", headers=api.headers("calm", READER))
    finally:
        for _ in range(admission.limit):
            gate.leave()
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["retry-after"]) >= 1
    body = refused.json()
    assert body["type"].endswith("/tenant-busy") and body["status"] == 429 and body["limit"] == admission.limit
    assert other.status_code == 200, other.text

    # Requests that end in every way give their permit back: answered, not found, refused, invalid, long poll.
    headers = api.headers("busy", READER)
    answers = [
        api.client.get("/api/v1/intents", headers=headers).status_code,
        api.client.get(f"/api/v1/intents/{uuid.uuid4()}", headers=headers).status_code,
        api.client.post("/api/v1/intents", json={"name": "nope"}, headers=headers).status_code,
        api.client.get("/api/v1/executions", params={"limit": 0}, headers=headers).status_code,
        api.client.get(f"/api/v1/executions/{uuid.uuid4()}/events", params={"wait": 1}, headers=headers).status_code,
    ]
    assert answers == [200, 404, 403, 422, 404]
    assert gate.in_flight == 0 and gate.waiting == 0
    assert api.client.get("/api/v1/intents", headers=headers).status_code == 200


def test_a_queued_request_gets_the_next_free_slot_and_the_queue_is_bounded() -> None:
    gate = TenantGate(limit=1, queue=1)
    assert gate.enter(0)
    admitted: list[bool] = []
    waiter = threading.Thread(target=lambda: admitted.append(gate.enter(30)))
    waiter.start()
    deadline = time.monotonic() + 10
    while gate.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.waiting == 1
    assert not gate.enter(30)  # the queue is full: refused at once rather than parked
    gate.leave()
    waiter.join(10)
    assert admitted == [True] and gate.in_flight == 1 and gate.waiting == 0
    gate.leave()
    with pytest.raises(RuntimeError):
        gate.leave()


def test_a_burst_queues_on_the_event_loop_and_is_served_in_turn_within_its_bounds() -> None:
    admission = Admission(2, queue=8, wait_s=0.0, queue_wait_s=5.0)
    tenant = uuid.uuid4()
    gate = admission.gate(tenant)

    async def request(served: list[int], number: int) -> None:
        permit = await admission.admit_waiting(tenant)
        try:
            assert gate.in_flight <= 2  # never more than the bound at once
            await asyncio.sleep(0.01)
            served.append(number)
        finally:
            permit.release()

    async def burst() -> tuple[list[int], list[BaseException | None]]:
        served: list[int] = []
        # 2 run, 8 wait without a thread each; the 11th and 12th find the queue full and are refused at once.
        results = await asyncio.gather(*(request(served, n) for n in range(12)), return_exceptions=True)
        return served, [r if isinstance(r, BaseException) else None for r in results]

    served, failures = asyncio.run(burst())
    refused = [f for f in failures if f is not None]
    assert len(served) == 10 and len(refused) == 2
    assert all(isinstance(f, ProblemError) and f.status == 429 and f.headers["Retry-After"] == "1" for f in refused)
    assert gate.in_flight == 0 and gate.waiting == 0


def test_a_queued_request_is_refused_once_its_wait_is_over() -> None:
    admission = Admission(1, queue=4, wait_s=0.0, queue_wait_s=0.05)
    tenant = uuid.uuid4()
    holder = admission.admit(tenant)
    with pytest.raises(ProblemError) as busy:
        asyncio.run(admission.admit_waiting(tenant))
    assert busy.value.status == 429 and admission.gate(tenant).waiting == 0
    holder.release()
    asyncio.run(admission.admit_waiting(tenant)).release()
    assert admission.gate(tenant).in_flight == 0


def test_the_platforms_own_reads_wait_for_a_permit_without_counting_as_refused_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A live stream's feed asked again every 50 ms through the request path: a thousand streams of a busy tenant
    # made thousands of refusals a second, each counted in qp.requests.refused (which the alerts read).
    refused: list[str] = []
    monkeypatch.setattr(metrics, "request_refused", lambda _tenant, slug: refused.append(slug))
    admission = Admission(1, queue=0, wait_s=0.0, queue_wait_s=0.01)
    tenant = uuid.uuid4()
    holder = admission.admit(tenant)
    assert asyncio.run(admission.permit_waiting(tenant)) is None and refused == []
    with pytest.raises(ProblemError):
        asyncio.run(admission.admit_waiting(tenant))  # a request is answered 429, and counted
    assert refused == ["tenant-busy"]
    holder.release()
    permit = asyncio.run(admission.permit_waiting(tenant))
    assert permit is not None and admission.gate(tenant).in_flight == 1
    permit.release()


@dataclass(frozen=True)
class _Polling:
    permit: Permit | None


def test_a_long_poll_holds_no_permit_while_it_waits() -> None:
    admission = Admission(1, wait_s=0.2)
    tenant = uuid.uuid4()
    gate = admission.gate(tenant)
    poll = _Polling(admission.admit(tenant))
    assert poll.permit is not None

    async def scenario() -> tuple[bool, Permit]:
        waiting = asyncio.create_task(idle(poll, 1.0))
        deadline = time.monotonic() + 10
        while gate.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        other = admission.admit(tenant)  # the waiting poll's slot serves another request meanwhile
        return await waiting, other

    resumed, other = asyncio.run(scenario())
    # The other request still holds the tenant's one slot: the poll answers with what it has instead of waiting.
    assert resumed is False and not poll.permit.held
    with pytest.raises(ProblemError) as busy:
        admission.admit(tenant)
    assert busy.value.status == 429 and busy.value.headers["Retry-After"] == "1"
    other.release()
    assert asyncio.run(idle(poll, 0.0)) is True and poll.permit.held
    poll.permit.release()
    poll.permit.release()  # once only: a second release gives nothing back twice
    assert gate.in_flight == 0


# --- a real host: one tenant's burst, another tenant's reads ----------------------------------------------------

POOL = 4
A_ROLES = ["Intent.Author", "Intent.Executor", "Intent.Reader"]


@dataclass
class Answer:
    """What the client saw: the status, the Retry-After header and the problem body of a refusal."""

    kind: str
    status: int
    retry_after: str | None
    content_type: str
    body: Any


def _answer(kind: str, response: httpx.Response) -> Answer:
    body: Any = None
    if response.headers.get("content-type", "").startswith(("application/json", "application/problem+json")):
        body = response.json()
    return Answer(
        kind, response.status_code, response.headers.get("retry-after"), response.headers.get("content-type", ""), body
    )


@pytest.mark.e2e
def test_one_tenants_burst_never_stalls_another(pg: Any, azurite: Any, tmp_path: Path) -> None:
    host = DevhostProcess(
        app_dir=PROJECT_ROOT,
        data_dir=pg.root,
        port=free_port(),
        env={
            "QP_BLOB_CONNECTION_STRING": azurite.connection_string,
            "QP_TASK_HUB": "TenantBurst",
            "QP_DATABASE_POOL_MAX": str(POOL),
            # Empty: this module's in-process fixtures point these at themselves; the host fills in its own.
            "QP_DATABASE_URL": "",
            "QP_DATABASE_CONTROL_URL": "",
            "QP_AUTH_METADATA_URL": "",
        },
        log_path=tmp_path / "devhost.log",
        extra_args=("--seed-demo",),
    ).start()
    try:
        base = host.base_url

        def headers(tenant: str, roles: list[str]) -> dict[str, str]:
            token = mint_token_cli(pg.root, base, tenant, roles, [], str(uuid.uuid4()), 3600, False)
            return {"Authorization": f"Bearer {token}"}

        a_headers, b_headers = headers("contoso", A_ROLES), headers("fabrikam", READER)
        with httpx.Client(base_url=base, timeout=60) as client:
            created = client.post(
                "/api/v1/intents",
                headers=a_headers,
                json={
                    "name": f"burst-{uuid.uuid4().hex[:8]}",
                    "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 0.2}]},
                },
            )
            assert created.status_code == 201, created.text
            quick = created.json()["id"]
            slow = client.post(
                "/api/v1/intents",
                headers=a_headers,
                json={
                    "name": f"followed-{uuid.uuid4().hex[:8]}",
                    "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 30}]},
                },
            )
            assert slow.status_code == 201, slow.text
            followed = client.post(f"/api/v1/intents/{slow.json()['id']}/execute", headers=a_headers)
            assert followed.status_code == 202, followed.text
            followed_id = followed.json()["execution_id"]
            assert client.get("/api/v1/intents", headers=b_headers).status_code == 200

        burst_done = threading.Event()
        b_answers: list[Answer] = []

        def b_reads() -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                while not burst_done.is_set() or len(b_answers) < 10:
                    b_answers.append(_answer("list", client.get("/api/v1/intents", headers=b_headers)))
                    time.sleep(0.2)  # paced under its own rate (10/s by default): a 429 here would prove nothing

        def a_execute() -> Answer:
            return _answer(
                "execute", httpx.post(f"{base}/api/v1/intents/{quick}/execute", headers=a_headers, timeout=60)
            )

        def a_poll() -> Answer:
            return _answer(
                "events",
                httpx.get(
                    f"{base}/api/v1/executions/{followed_id}/events",
                    params={"after": 100_000, "wait": 3},
                    headers=a_headers,
                    timeout=60,
                ),
            )

        reader = threading.Thread(target=b_reads)
        reader.start()
        a_answers: list[Answer] = []
        try:
            with ThreadPoolExecutor(max_workers=6 * POOL) as workers:
                for _ in range(3):  # rounds, so the other tenant's reads overlap the burst throughout
                    futures = [workers.submit(a_execute) for _ in range(3 * POOL)]
                    futures += [workers.submit(a_poll) for _ in range(3 * POOL)]
                    a_answers += [future.result(timeout=120) for future in futures]
        finally:
            burst_done.set()
            reader.join(120)
        assert not reader.is_alive()

        for answer in a_answers:
            assert answer.status in (200, 202, 429, 503), answer
            if answer.status in (429, 503):
                assert answer.retry_after is not None and int(answer.retry_after) >= 1, answer
                assert answer.content_type.startswith("application/problem+json"), answer
                assert answer.body["status"] == answer.status and answer.body["type"], answer
        assert any(a.kind == "execute" and a.status == 202 for a in a_answers)
        assert len(b_answers) >= 10
        assert [a for a in b_answers if a.status != 200] == []

        with httpx.Client(base_url=base, timeout=60) as client:
            # Every permit came back: the bursting tenant is served as usual again.
            assert client.get("/api/v1/intents", headers=a_headers).status_code == 200
            cancelled = client.post(f"/api/v1/executions/{followed_id}/cancel", headers=a_headers)
            assert cancelled.status_code == 202, cancelled.text
        assert "NestedBorrowError" not in host.log()
    finally:
        host.stop()


def test_busy_tenants_leave_connections_over_for_tenants_with_none_in_flight() -> None:
    # Bounded at half the pool each, two busy tenants held all of it, and a third tenant's request waited for a
    # connection until the pool's timeout: a 503 for a tenant that had sent one request.
    admission = Admission(5, queue=0, wait_s=0.0, pool=PoolShare(10))
    assert admission.pool is not None and admission.pool.reserve == 2
    alpha, beta, gamma, delta = (admission.gate(uuid.uuid4()) for _ in range(4))
    assert [alpha.enter(0) for _ in range(6)] == [True] * 5 + [False]  # its own limit
    assert [beta.enter(0) for _ in range(4)] == [True] * 3 + [False]  # 8 in flight: the reserve's two are left
    assert beta.room() == 3 and beta.in_flight == 3
    assert gamma.enter(0) and delta.enter(0)  # a tenant's first request is always let in
    assert not gamma.enter(0)
    for gate, held in ((alpha, 5), (beta, 3), (gamma, 1), (delta, 1)):
        for _ in range(held):
            gate.leave()
    assert alpha.room() == 5


def test_tenants_with_a_request_each_are_not_held_to_one_while_connections_are_free() -> None:
    # A share per busy tenant (the pool over busy tenants plus one) held five tenants with a request each to one
    # request each, half the pool idle.
    admission = Admission(5, queue=0, wait_s=0.0, pool=PoolShare(10))
    gates = [admission.gate(uuid.uuid4()) for _ in range(5)]
    assert all(gate.enter(0) for gate in gates)
    assert [gates[0].enter(0) for _ in range(4)] == [True] * 3 + [False]  # up to the reserve: 8 in flight
    for gate in gates:
        while gate.in_flight:
            gate.leave()


@pytest.mark.integration
def test_the_apis_admission_shares_the_tenant_pool(api: ApiHarness) -> None:
    get_admission.cache_clear()
    try:
        admission = get_admission()
        assert admission.pool is not None and admission.pool.pool_size == get_settings().QP_DATABASE_POOL_MAX
    finally:
        get_admission.cache_clear()
