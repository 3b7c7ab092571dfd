# intent_ref: platform.hardening
"""A request body is parsed only for a caller who may send it, and never on the event loop: a permission-checked
route parses its body after sign-in, the permission decision and the tenant's admission and rate token, on a worker
thread, one of a tenant's bodies at a time, so a caller without a token, without the role or over its tenant's
bounds makes nobody parse anything, and a tenant's parses never wait for another tenant's; the routes no permission
guards parse at the edge, on a worker thread too. A JSON body naming a charset other than UTF-8
is refused 415, as it is read as UTF-8 whatever it says."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.requests import Request

from shared.accepted_json import loads as accepted_loads
from shared.api import accepted_input, permissions
from shared.api.accepted_input import UNPARSED_BODY
from shared.api.admission import get_admission
from shared.engine import task_tokens
from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author"]
READER = ["Intent.Reader"]
VALIDATE = "/api/v1/intents/validate"
DOCUMENT = {"name": "parsed", "definition": {"target": "staging", "steps": [{"action": "wait", "seconds": 1}]}}
JSON = {"Content-Type": "application/json"}


@dataclass
class Parses:
    """Every call of the edge's body parsers (the bracket count and the accepted-JSON parse): which, and whether an
    event loop was running on the thread that made it."""

    calls: list[tuple[str, bool]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spy(self, name: str, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def recorded(body: bytes) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            with self._lock:
                self.calls.append((name, on_loop))
            return parse(body)

        return recorded

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Parses:
    recorded = Parses()
    for name in ("containers", "loads"):
        monkeypatch.setattr(accepted_input, name, recorded.spy(name, getattr(accepted_input, name)))
    return recorded


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> str:
    api.provision("edge-parse", allowed_modules=["wait"], quotas={"requests_per_minute": 100_000, "burst": 10_000})
    return "edge-parse"


def _post(api: ApiHarness, body: bytes, headers: dict[str, str], path: str = VALIDATE) -> Any:
    return api.client.post(path, content=body, headers={**JSON, **headers})


def _problem(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["type"].endswith(f"/{kind}"), document
    return document


@pytest.mark.parametrize("body", [b'{"name": "cut', json.dumps(DOCUMENT).encode(), b"[" * 200_000])
def test_a_caller_without_a_token_is_401_and_no_body_is_parsed(api: ApiHarness, parses: Parses, body: bytes) -> None:
    _problem(_post(api, body, {}), 401, "invalid-token")
    _problem(_post(api, body, {"Authorization": "Bearer not-a-token"}), 401, "invalid-token")
    assert parses.calls == []


def test_a_caller_without_the_role_is_403_and_no_body_is_parsed(api: ApiHarness, tenant: str, parses: Parses) -> None:
    _problem(_post(api, b'{"name": "cut', api.headers(tenant, READER)), 403, "forbidden")
    assert parses.calls == []


def test_an_allowed_callers_body_is_parsed_once_off_the_event_loop(
    api: ApiHarness, tenant: str, parses: Parses
) -> None:
    accepted = _post(api, json.dumps(DOCUMENT).encode(), api.headers(tenant, AUTHOR))
    assert accepted.status_code == 200, accepted.text[:500]
    assert parses.calls == [("containers", False), ("loads", False)]

    parses.calls.clear()
    refused = _problem(_post(api, b'{"name": "cut', api.headers(tenant, AUTHOR)), 422, "validation-error")
    assert [error["code"] for error in refused["errors"]] == ["invalid_json"]
    assert parses.calls == [("containers", False), ("loads", False)]


def _forged_task_token() -> str:
    claims = {
        "t": str(uuid.uuid4()),
        "e": str(uuid.uuid4()),
        "s": "build",
        "p": "run",
        "a": 1,
        "n": "x",
        "x": 4 * 10**9,
    }
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{task_tokens.PREFIX}.{payload}.c2ln"


def test_a_body_parsed_at_the_edge_is_parsed_off_the_event_loop(api: ApiHarness, parses: Parses) -> None:
    # The remote workers' completion routes check no permission: their credential is in the body, which the edge
    # parses before the task token is read from it, on a worker thread.
    url = f"/api/v1/executions/{uuid.uuid4()}/steps/build/complete"
    body = json.dumps({"task_token": _forged_task_token(), "output": {}}).encode()
    _problem(_post(api, body, {}, url), 401, "invalid-task-token")
    assert parses.calls == [("containers", False), ("loads", False)]

    parses.calls.clear()
    refused = _problem(_post(api, b'{"task_token": ', {}, url), 422, "validation-error")
    assert [error["code"] for error in refused["errors"]] == ["invalid_json"]
    assert parses.calls == [("containers", False), ("loads", False)]


def test_a_request_over_its_tenants_rate_is_429_and_its_body_is_not_parsed(api: ApiHarness, parses: Parses) -> None:
    api.provision("edge-parse-rate", allowed_modules=["wait"], quotas={"requests_per_minute": 1, "burst": 1})
    headers = api.headers("edge-parse-rate", [*AUTHOR, *READER])
    assert api.client.get("/api/v1/intents", headers=headers).status_code == 200  # the tenant's one token
    assert parses.calls == []

    _problem(_post(api, json.dumps(DOCUMENT).encode(), headers), 429, "rate-limited")
    _problem(_post(api, b'{"name": "cut', headers), 429, "rate-limited")
    assert parses.calls == []


def test_a_request_over_its_tenants_bound_in_flight_is_429_and_its_body_is_not_parsed(
    api: ApiHarness, parses: Parses
) -> None:
    handle = api.provision("edge-parse-busy", allowed_modules=["wait"])
    admission = get_admission()
    gate = admission.gate(handle.id)
    for _ in range(admission.limit):
        assert gate.enter(0)
    for _ in range(gate.queue):  # the queue full too, so the refusal is at once instead of after the queue wait
        assert gate.join_queue()
    try:
        busy = _post(api, json.dumps(DOCUMENT).encode(), api.headers("edge-parse-busy", AUTHOR))
    finally:
        for _ in range(gate.queue):
            gate.leave_queue()
        for _ in range(admission.limit):
            gate.leave()
    _problem(busy, 429, "tenant-busy")
    assert parses.calls == []


@pytest.mark.parametrize("charset", ["utf-16", "UTF-16LE", "latin-1", '"utf-32"', ""])
def test_a_json_body_naming_another_charset_than_utf_8_is_415(
    api: ApiHarness, tenant: str, parses: Parses, charset: str
) -> None:
    body = json.dumps(DOCUMENT).encode()
    content_type = {"Content-Type": f"application/json; charset={charset}"}
    for headers in (api.headers(tenant, AUTHOR), {}):  # at the edge, before sign-in, as any other media type
        refused = _problem(_post(api, body, {**headers, **content_type}), 415, "unsupported-media-type")
        assert "UTF-8" in refused["detail"]
    assert parses.calls == []


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", '"utf-8"', "utf8"])
def test_a_json_body_naming_utf_8_is_accepted(api: ApiHarness, tenant: str, charset: str) -> None:
    headers = {**api.headers(tenant, AUTHOR), "Content-Type": f"application/json; charset={charset}"}
    accepted = _post(api, json.dumps(DOCUMENT).encode(), headers)
    assert accepted.status_code == 200, accepted.text[:500]


def test_a_tenants_bodies_are_parsed_one_at_a_time_and_never_behind_another_tenants(
    api: ApiHarness, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = "edge-parse-other"
    api.provision(other, allowed_modules=["wait"])
    parsing: list[str] = []
    entered = threading.Semaphore(0)
    release = threading.Event()

    def held(body: bytes) -> Any:
        name = str(json.loads(body)["name"])
        parsing.append(name)
        entered.release()
        assert release.wait(30)
        parsing.remove(name)
        return accepted_loads(body)

    monkeypatch.setattr(accepted_input, "loads", held)

    def send(who: str, name: str) -> Any:
        return _post(api, json.dumps({**DOCUMENT, "name": name}).encode(), api.headers(who, AUTHOR))

    with ThreadPoolExecutor(max_workers=3) as pool:
        try:
            first = pool.submit(send, tenant, "first")
            assert entered.acquire(timeout=30)
            second = pool.submit(send, tenant, "second")
            [queued] = permissions._TENANT_PARSES.made(api.tenants[tenant].id)  # the one loop the client serves on
            deadline = time.monotonic() + 30
            while queued.statistics().tasks_waiting < 1:  # the tenant's second body waits for its first
                assert time.monotonic() < deadline, "the tenant's second request never reached its parse"
                time.sleep(0.01)
            elsewhere = pool.submit(send, other, "elsewhere")
            assert entered.acquire(timeout=30)  # another tenant's body is parsed meanwhile
            assert sorted(parsing) == ["elsewhere", "first"]
        finally:
            release.set()
        answers = [first.result(), second.result(), elsewhere.result()]
    assert [answer.status_code for answer in answers] == [200, 200, 200], [a.text[:300] for a in answers]
    assert parsing == []


def test_event_loops_on_two_threads_both_get_through_a_tenants_parse_limiter() -> None:
    # One limiter per tenant shared by every loop: a loop's waiter woken from another loop's thread was never
    # resumed, and the API served on two threads, each with its own loop, hung on the same tenant's bodies.
    tenant_id = uuid.uuid4()
    body = json.dumps({**DOCUMENT, "definition": {**DOCUMENT["definition"], "labels": ["x"] * 2000}}).encode()
    finished: list[int] = []
    failures: list[BaseException] = []

    async def parses() -> int:
        async def one() -> None:
            await permissions._parse_held_body(Request({"type": "http", UNPARSED_BODY: body}), tenant_id)

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(40))), timeout=60)
        return 40

    def run() -> None:
        try:
            finished.append(asyncio.run(parses()))
        except BaseException as exc:  # reported below, not lost on the thread
            failures.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert finished == [40, 40]
