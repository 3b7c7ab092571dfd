# intent_ref: platform.rate-limits
"""A remote completion is admitted like every request of its tenant, and only once its task token has verified: a
forged token costs the tenant it names nothing, and a bounded few connections of the pool at most (ADR 0027)."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.admission import get_admission
from shared.api.durable import get_durable_client
from shared.db.session import tenant_transaction
from shared.engine import remote, task_tokens
from shared.engine import steps as store
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.security.test_task_token_no_trace import RecordingClient, RemoteAttempt, remote_attempt

pytestmark = pytest.mark.integration
MEMO_BOUND_S = 5.0
"""How long ADR 0027 lets a process verify with a key it read, after which a deleted key verifies no more."""
KEY_READ_BOUND = 2
"""Connections that key reads for tokens naming tenants this process has no key of may hold at once (ADR 0027)."""


class FrozenClock:
    """The task-token key memo's clock, moved by the test only, so a memo period passes exactly when it says."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    frozen = FrozenClock()
    monkeypatch.setattr(task_tokens, "time", frozen, raising=False)
    return frozen


@pytest.fixture
def client(api: ApiHarness) -> Iterator[RecordingClient]:
    recording = RecordingClient()
    api.client.app.dependency_overrides[get_durable_client] = lambda: recording  # type: ignore[attr-defined]
    yield recording
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


class Borrows:
    """The tenant transactions the completion path opens, and how many were open at once."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.tenants: list[uuid.UUID] = []
        self.open = self.most_open = 0
        self._hold_s = hold_s
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self, tenant_id: uuid.UUID, **kwargs: Any) -> Iterator[Any]:
        with self._lock:
            self.tenants.append(tenant_id)
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        try:
            with tenant_transaction(tenant_id, **kwargs) as conn:
                time.sleep(self._hold_s)  # long enough for concurrent requests to overlap here if nothing bounds them
                yield conn
        finally:
            with self._lock:
                self.open -= 1


@pytest.fixture
def borrows(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], Borrows]:
    def counting(hold_s: float = 0.0) -> Borrows:
        counter = Borrows(hold_s)
        monkeypatch.setattr(remote, "tenant_transaction", counter.transaction)
        return counter

    return counting


def forged(tenant_id: uuid.UUID) -> str:
    """A well-formed token naming `tenant_id`, signed with no key at all (what anyone can send)."""
    claims = {"t": str(tenant_id), "e": str(uuid.uuid4()), "s": "build", "p": "run", "a": 1, "n": "x", "x": 4 * 10**9}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{task_tokens.PREFIX}.{payload}.c2ln"


def post_all(api: ApiHarness, tokens: list[str], workers: int = 10) -> list[Any]:
    """Completions of the tokens, sent at once and without any Authorization header."""

    def post(token: str) -> Any:
        url = f"/api/v1/executions/{uuid.uuid4()}/steps/build/complete"
        return api.client.post(url, json={"task_token": token, "output": {}})

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(post, tokens))


def complete(api: ApiHarness, attempt: RemoteAttempt) -> Any:
    return api.client.post(attempt.url(), json={"task_token": attempt.token, "output": {"image": "x"}})


def attempt_open(pool: ConnectionPool[Any], attempt: RemoteAttempt) -> bool:
    with tenant_transaction(attempt.tenant_id, pool=pool) as conn:
        found = store.get_attempt(conn, attempt.key)
    return found is not None and found.finished_at is None


def assert_unauthorized(answer: Any) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"].endswith("/invalid-task-token")


def assert_no_permit_held(tenant_id: uuid.UUID) -> None:
    gate = get_admission().gate(tenant_id)
    assert (gate.in_flight, gate.waiting) == (0, 0)


def test_forged_tokens_of_a_known_tenant_open_no_transaction_and_take_none_of_its_rate(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    client: RecordingClient,
    clock: FrozenClock,
    borrows: Callable[[float], Borrows],
) -> None:
    victim = api.provision("forged-known", quotas={"requests_per_minute": 1, "burst": 1})
    real = remote_attempt(app_pool, victim.id)  # its lease read the tenant's key into this process's memo
    counted = borrows(0.0)

    answers = post_all(api, [forged(victim.id) for _ in range(40)])
    for answer in answers:
        assert_unauthorized(answer)
    assert counted.tenants == []
    # Once the memo period is over, one request re-reads the key while the others wait for it: one borrow in all.
    clock.now += MEMO_BOUND_S
    for answer in post_all(api, [forged(victim.id) for _ in range(20)]):
        assert_unauthorized(answer)
    assert counted.tenants == [victim.id]

    # None of them took the tenant's one request token or held its permit: its worker's real result goes through.
    recorded = complete(api, real)
    assert recorded.status_code == 200, recorded.text
    assert client.raised and client.raised[0][0] == str(real.key.execution_id)
    assert_no_permit_held(victim.id)


def test_forged_tokens_of_unknown_tenants_hold_a_bounded_few_connections(
    api: ApiHarness, client: RecordingClient, borrows: Callable[[float], Borrows]
) -> None:
    counted = borrows(0.02)
    answers = post_all(api, [forged(uuid.uuid4()) for _ in range(48)], workers=16)

    for answer in answers:
        if answer.status_code == 429:  # refused at the bounded queue for key reads: still a problem, retry later
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.headers["retry-after"] == "1"
        else:
            assert_unauthorized(answer)
    assert sum(answer.status_code == 401 for answer in answers) >= len(answers) // 2
    assert 1 <= counted.most_open <= KEY_READ_BOUND, counted.most_open


def test_a_worker_over_its_tenants_rate_is_refused_429_and_records_nothing(
    api: ApiHarness, app_pool: ConnectionPool[Any], client: RecordingClient, clock: FrozenClock
) -> None:
    handle = api.provision("worker-rate", quotas={"requests_per_minute": 1, "burst": 1})
    first, second = remote_attempt(app_pool, handle.id), remote_attempt(app_pool, handle.id)

    assert complete(api, first).status_code == 200
    refused = complete(api, second)
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/rate-limited")
    assert int(refused.headers["retry-after"]) >= 1
    assert attempt_open(app_pool, second)
    assert [instance for instance, _, _ in client.raised] == [str(first.key.execution_id)]
    assert_no_permit_held(handle.id)


def test_a_full_tenant_gate_is_429_tenant_busy_and_every_path_gives_the_permit_back(
    api: ApiHarness, app_pool: ConnectionPool[Any], client: RecordingClient, clock: FrozenClock
) -> None:
    handle = api.provision("worker-busy")
    attempt = remote_attempt(app_pool, handle.id)
    admission = get_admission()
    gate = admission.gate(handle.id)
    for _ in range(admission.limit):
        assert gate.enter(0)
    for _ in range(gate.queue):  # the queue full too, so the refusal is at once instead of after the queue wait
        assert gate.join_queue()
    try:
        busy = complete(api, attempt)
    finally:
        for _ in range(gate.queue):
            gate.leave_queue()
        for _ in range(admission.limit):
            gate.leave()
    assert busy.status_code == 429, busy.text
    assert busy.headers["content-type"].startswith("application/problem+json")
    assert busy.json()["type"].endswith("/tenant-busy")
    assert busy.headers["retry-after"] == "1"
    assert attempt_open(app_pool, attempt) and client.raised == []

    assert complete(api, attempt).status_code == 200
    assert_no_permit_held(handle.id)
    # Another result with the spent token is refused after the permit was taken: it is given back as well.
    spent = api.client.post(attempt.url(), json={"task_token": attempt.token, "output": {"image": "other"}})
    assert spent.status_code == 409, spent.text
    assert_no_permit_held(handle.id)
    other = remote_attempt(app_pool, handle.id)
    mismatched = api.client.post(attempt.url(), json={"task_token": other.token, "output": {}})
    assert mismatched.status_code == 403, mismatched.text
    assert_no_permit_held(handle.id)


def test_a_deleted_key_stops_verifying_once_the_memo_period_is_over(
    api: ApiHarness, app_pool: ConnectionPool[Any], client: RecordingClient, clock: FrozenClock
) -> None:
    handle = api.provision("key-erased")
    old = remote_attempt(app_pool, handle.id)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:  # as an erasure, or an operator replacing it
        conn.execute("DELETE FROM app.task_token_keys WHERE tenant_id = %s", (handle.id,))

    clock.now += MEMO_BOUND_S
    assert_unauthorized(complete(api, old))
    assert attempt_open(app_pool, old)

    new = remote_attempt(app_pool, handle.id)  # the next lease creates a new key; the old one never comes back
    assert complete(api, new).status_code == 200
    assert_unauthorized(complete(api, old))
    assert [instance for instance, _, _ in client.raised] == [str(new.key.execution_id)]
