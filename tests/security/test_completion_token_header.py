# intent_ref: platform.hardening
"""A remote worker's result carrying its task token in X-Task-Token is verified before its body is parsed and parsed
apart from bodies without one: a flood of hostile bodies without a valid token, which the edge must parse to find
theirs, delays it no more, and is itself bounded per process (429 with Retry-After past it); so are bodies whose
header token verifies, per tenant and per process (the edge checks a token's signature and expiry only, so a spent
token verifies too). A header token that does not verify is refused before the body is read; one the body's token
contradicts is refused; a result with its token in the body only, as workers sent it before, still works (ADR
0027)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import pytest
from psycopg_pool import ConnectionPool

from shared.api import accepted_input
from shared.api.durable import get_durable_client
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine import task_tokens
from tests.integration.api_harness import ApiHarness
from tests.security.test_task_token_no_trace import RecordingClient, RemoteAttempt, remote_attempt

pytestmark = pytest.mark.integration

HEADER = "X-Task-Token"
FLOOD = accepted_input.UNVERIFIED_BODIES
MARKER = b"hostile-flood-body"
GIVE_UP_S = 30.0
"""How long a test waits for what it waits for before it fails: a bound for a broken build, never a measurement."""


class HeldFlood:
    """The edge's parses as the tests see them: hostile bodies (those holding MARKER) wait for `release` before they
    are parsed, so those behind the first stay queued for as long as a test needs them to."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.queued = 0  # hostile bodies handed to the edge's parse, waiting for it or in it
        self.hostile_parses = 0  # hostile bodies whose parse began
        self.limiters: list[tuple[bool, anyio.CapacityLimiter | None]] = []  # (hostile?, limiter) of every parse
        self._lock = threading.Lock()

    def wait_until_queued(self, count: int) -> None:
        deadline = time.monotonic() + GIVE_UP_S
        while self.queued < count:
            assert time.monotonic() < deadline, f"{self.queued} of {count} hostile bodies reached the edge's parse"
            time.sleep(0.01)


@pytest.fixture
def flood(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldFlood]:
    held = HeldFlood()
    parsed, parse_body = accepted_input.parsed, accepted_input.parse_body

    async def counted(body: bytes, *, limiter: anyio.CapacityLimiter | None = None) -> Any:
        hostile = MARKER in body
        with held._lock:
            held.limiters.append((hostile, limiter))
            held.queued += hostile
        return await parsed(body, limiter=limiter)

    def waits_for_release(body: bytes) -> Any:
        if MARKER in body:
            with held._lock:
                held.hostile_parses += 1
            held.release.wait(GIVE_UP_S * 2)  # never forever, whatever goes wrong
        return parse_body(body)

    monkeypatch.setattr(accepted_input, "parsed", counted)
    monkeypatch.setattr(accepted_input, "parse_body", waits_for_release)
    try:
        yield held
    finally:
        held.release.set()


@pytest.fixture
def client(api: ApiHarness) -> Iterator[RecordingClient]:
    recording = RecordingClient()
    api.client.app.dependency_overrides[get_durable_client] = lambda: recording  # type: ignore[attr-defined]
    yield recording
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


@pytest.fixture
def attempt(api: ApiHarness, app_pool: ConnectionPool[Any]) -> RemoteAttempt:
    handle = api.provision("header-token", quotas={"requests_per_minute": 10_000, "burst": 1_000})
    return remote_attempt(app_pool, handle.id)


@contextlib.contextmanager
def senders(flood: HeldFlood, workers: int) -> Iterator[ThreadPoolExecutor]:
    """Threads to send on; at the end the held bodies are let go before the threads are waited for, so that a failed
    assertion does not leave each held parse to wait out its bound, one after another."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield pool
    finally:
        flood.release.set()
        pool.shutdown(wait=True)


def hostile_body() -> bytes:
    """A body just under the body limit whose token verifies nothing: what anyone past the gateway can send."""
    size = get_settings().QP_MAX_BODY_BYTES - 1024
    head = json.dumps({"task_token": "qpt1.forged.c2ln", "output": {"marker": MARKER.decode()}})
    return (head[:-1] + ', "padding": "' + "x" * (size - len(head)) + '"}').encode()


def send_flood(api: ApiHarness, pool: ThreadPoolExecutor, attempt: RemoteAttempt, count: int) -> list[Future[Any]]:
    """`count` hostile bodies sent at once to the attempt's completion route, none with a token header."""
    body = hostile_body()
    headers = {"Content-Type": "application/json"}
    return [pool.submit(api.client.post, attempt.url(), content=body, headers=headers) for _ in range(count)]


def answer_to(pool: ThreadPoolExecutor, flood: HeldFlood, send: Callable[[], httpx.Response]) -> httpx.Response:
    """The answer to `send`, made on another thread: a request that waits behind the held flood fails the test."""
    future = pool.submit(send)
    try:
        return future.result(timeout=GIVE_UP_S)
    except TimeoutError:
        flood.release.set()  # let the flood and the request behind it end, so the pool can be shut
        pytest.fail(f"not answered within {GIVE_UP_S} s while the hostile bodies were held")


def assert_problem(answer: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text[:500]
    assert answer.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = answer.json()
    assert document["type"].endswith(f"/{slug}")
    return document


def attempt_open(pool: ConnectionPool[Any], attempt: RemoteAttempt) -> bool:
    with tenant_transaction(attempt.tenant_id, pool=pool) as conn:
        found = store.get_attempt(conn, attempt.key)
    return found is not None and found.finished_at is None


def test_a_result_with_a_verified_header_token_is_answered_while_a_flood_of_hostile_bodies_is_held(
    api: ApiHarness, flood: HeldFlood, client: RecordingClient, attempt: RemoteAttempt
) -> None:
    with senders(flood, FLOOD + 2) as pool:
        hostile = send_flood(api, pool, attempt, FLOOD)
        flood.wait_until_queued(FLOOD)

        done = answer_to(
            pool,
            flood,
            lambda: api.client.post(
                attempt.url(), headers={HEADER: attempt.token}, json={"task_token": attempt.token, "output": {"a": 1}}
            ),
        )
        # Answered while every hostile body is still held: it waited for none of them. Before, it queued behind all
        # of them on the completions' one parse per process (7 s behind 30 such bodies; past its lease, its work lost).
        assert done.status_code == 200, done.text
        assert done.json()["state"] == "succeeded"
        assert not any(future.done() for future in hostile)
        assert flood.queued == FLOOD and flood.hostile_parses == 1
        assert [instance for instance, _, _ in client.raised] == [str(attempt.key.execution_id)]

        flood.release.set()
        for future in hostile:
            assert_problem(future.result(timeout=GIVE_UP_S), 401, "invalid-task-token")


def test_a_body_without_a_verified_header_token_past_the_bound_is_429_with_retry_after_and_not_parsed(
    api: ApiHarness, app_pool: ConnectionPool[Any], flood: HeldFlood, client: RecordingClient, attempt: RemoteAttempt
) -> None:
    with senders(flood, FLOOD + 2) as pool:
        hostile = send_flood(api, pool, attempt, FLOOD)
        flood.wait_until_queued(FLOOD)

        # An old-style result (its token in the body only) past the bound: refused at once, its body never parsed.
        # Before, it queued after the others without end, each one holding its body in memory.
        busy = answer_to(
            pool, flood, lambda: api.client.post(attempt.url(), json={"task_token": attempt.token, "output": {"a": 1}})
        )
        # 429, not 503: anyone past the gateway can fill the bound, and a 5xx pages the operator.
        document = assert_problem(busy, 429, "completions-busy")
        assert busy.headers["retry-after"] == str(accepted_input.UNVERIFIED_RETRY_AFTER_S)
        assert document["limit"] == FLOOD
        assert HEADER in document["detail"]
        assert len(flood.limiters) == FLOOD  # the hostile bodies' parses only
        assert not any(future.done() for future in hostile)
        assert attempt_open(app_pool, attempt) and client.raised == []

        flood.release.set()
        for future in hostile:
            assert_problem(future.result(timeout=GIVE_UP_S), 401, "invalid-task-token")
    assert accepted_input.UNVERIFIED_PLACES.taken == 0  # every place given back

    # Sent again once the flood is gone, as a worker does after Retry-After: recorded.
    again = api.client.post(attempt.url(), json={"task_token": attempt.token, "output": {"a": 1}})
    assert again.status_code == 200, again.text


def _forged(attempt: RemoteAttempt) -> str:
    prefix, payload, _ = attempt.token.split(".")
    return f"{prefix}.{payload}.c2lnbmF0dXJl"


def _expired(pool: ConnectionPool[Any], attempt: RemoteAttempt) -> str:
    with tenant_transaction(attempt.tenant_id, pool=pool) as conn:
        issued = task_tokens.issue(
            conn, attempt.tenant_id, attempt.key, 0, nonce="expired", expires_at=datetime.now(UTC)
        )
    return issued.token


@pytest.mark.parametrize("kind", ["forged", "expired", "not a token", "empty"])
def test_a_header_token_that_does_not_verify_is_401_before_the_body_is_parsed(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    flood: HeldFlood,
    client: RecordingClient,
    attempt: RemoteAttempt,
    kind: str,
) -> None:
    token = {"forged": _forged(attempt), "not a token": "qpt1.nothing", "empty": ""}.get(kind)
    header = _expired(app_pool, attempt) if kind == "expired" else token
    assert header is not None
    flood.release.set()  # nothing is held: a parse would be seen, not waited for
    for route in ("/complete", "/fail", "/compensation/complete"):
        url = attempt.url().removesuffix("/complete") + route
        answer = api.client.post(
            url, headers={HEADER: header, "Content-Type": "application/json"}, content=hostile_body()
        )
        assert_problem(answer, 401, "invalid-task-token")
    # Refused on the header alone: none of the bodies was parsed (each was, to find its token, before).
    assert flood.limiters == [] and flood.hostile_parses == 0
    assert attempt_open(app_pool, attempt) and client.raised == []


def test_a_repeated_header_token_is_400_before_the_body_is_parsed(
    api: ApiHarness, flood: HeldFlood, attempt: RemoteAttempt
) -> None:
    flood.release.set()
    headers = [(HEADER, attempt.token), (HEADER, attempt.token), ("Content-Type", "application/json")]
    answer = api.client.post(attempt.url(), headers=headers, content=hostile_body())
    assert_problem(answer, 400, "repeated-header")
    assert flood.limiters == []


def test_a_body_token_other_than_the_header_token_is_refused_and_records_nothing(
    api: ApiHarness, app_pool: ConnectionPool[Any], flood: HeldFlood, client: RecordingClient, attempt: RemoteAttempt
) -> None:
    flood.release.set()
    other = remote_attempt(app_pool, attempt.tenant_id)  # a valid token, of another attempt
    for body_token in (other.token, _forged(attempt), "x"):
        answer = api.client.post(
            attempt.url(), headers={HEADER: attempt.token}, json={"task_token": body_token, "output": {"a": 1}}
        )
        document = assert_problem(answer, 422, "validation-error")
        assert [error["pointer"] for error in document["errors"]] == ["/task_token"]
    assert attempt_open(app_pool, attempt) and attempt_open(app_pool, other) and client.raised == []


def test_a_result_with_its_token_in_the_header_only_is_recorded_on_its_tenants_limiter(
    api: ApiHarness, app_pool: ConnectionPool[Any], flood: HeldFlood, client: RecordingClient, attempt: RemoteAttempt
) -> None:
    flood.release.set()
    done = api.client.post(attempt.url(), headers={HEADER: attempt.token}, json={"output": {"a": 1}})
    assert done.status_code == 200, done.text
    failing = remote_attempt(app_pool, attempt.tenant_id)
    failed = api.client.post(
        failing.url().removesuffix("/complete") + "/fail",
        headers={HEADER: failing.token},
        json={"error": "broken", "retryable": False},
    )
    assert failed.status_code == 200, failed.text
    assert failed.json()["state"] != "succeeded"
    assert len(client.raised) == 2
    limiters = [limiter for _, limiter in flood.limiters]
    assert len(limiters) == 2 and limiters[0] is limiters[1]  # the tenant's own limiter of verified results
    assert limiters[0] is not accepted_input.COMPLETION_PARSES


def test_an_old_style_result_with_its_token_in_the_body_only_still_works(
    api: ApiHarness, app_pool: ConnectionPool[Any], flood: HeldFlood, client: RecordingClient, attempt: RemoteAttempt
) -> None:
    flood.release.set()
    done = api.client.post(attempt.url(), json={"task_token": attempt.token, "output": {"a": 1}})
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "succeeded"
    # Parsed where bodies without a verified header token are, within their bound.
    assert [limiter for _, limiter in flood.limiters] == [accepted_input.COMPLETION_PARSES]
    assert accepted_input.UNVERIFIED_PLACES.taken == 0
    assert [instance for instance, _, _ in client.raised] == [str(attempt.key.execution_id)]
    assert not attempt_open(app_pool, attempt)
    assert uuid.UUID(done.json()["execution_id"]) == attempt.key.execution_id


def test_bodies_with_a_verified_header_token_are_bounded_per_tenant_even_when_the_token_is_spent(
    api: ApiHarness, flood: HeldFlood, client: RecordingClient, attempt: RemoteAttempt
) -> None:
    # The edge verifies a header token's signature and expiry (a day by default), not whether it was spent: a holder
    # of one sent any number of bodies with it, each held in the memory every tenant's requests share until parsed.
    done = api.client.post(attempt.url(), headers={HEADER: attempt.token}, json={"output": {"a": 1}})
    assert done.status_code == 200, done.text  # the token is spent now
    bound = accepted_input.VERIFIED_BODIES_PER_TENANT
    body = hostile_body()
    headers = {"Content-Type": "application/json", HEADER: attempt.token}
    with senders(flood, bound + 4) as pool:
        held = [pool.submit(api.client.post, attempt.url(), content=body, headers=headers) for _ in range(bound)]
        flood.wait_until_queued(bound)
        past = answer_to(pool, flood, lambda: api.client.post(attempt.url(), content=body, headers=headers))
        document = assert_problem(past, 429, "tenant-busy")
        assert past.headers["retry-after"] == str(accepted_input.UNVERIFIED_RETRY_AFTER_S)
        assert document["limit"] == bound
        assert flood.queued == bound  # the one past the bound was never handed to a parse
        flood.release.set()
        for future in held:
            assert future.result(timeout=GIVE_UP_S).status_code in (409, 422)  # spent: nothing recorded
    assert accepted_input.VERIFIED_PLACES.taken == 0
