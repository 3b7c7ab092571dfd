# intent_ref: platform.events
"""Saving a webhook subscription looks its URL's host up as a delivery does: within a deadline of its own and in the
tenant's share of the process's lookups. Unbounded, a tenant's names whose servers never answer held a request thread
each for the resolver's own timeouts, threads every tenant's requests need."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from shared.events import webhooks
from shared.modules import ssrf
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import ADMIN, Receiver, local, tenant  # noqa: F401  # `local`: the fixture
from tests.unit.test_lookup_bounds_per_tenant import _all_lookups_ended

pytestmark = pytest.mark.integration

SILENT = ".black-hole.example"
"""Names whose servers never answer: their lookups block until the test releases them."""
RESOLVING = ".resolving.example"
"""Names that resolve at once, to a public address (a save checks the address and connects to nothing)."""
PUBLIC = "93.184.215.14"
ANSWER_WITHIN_S = 30.0
"""How long a request is waited for: far past the save's deadline, far short of a silent lookup's release."""
SILENT_FOR_S = 120.0
"""How long a silent lookup blocks unless released (the resolver's timeouts, as far as a save can tell)."""


class NameServers:
    """The system resolver's stand-in: SILENT names block until released, RESOLVING names answer PUBLIC, the rest
    are looked up as before (the harness's own loopback connections)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.released = threading.Event()
        self._asked: list[str] = []
        self._changed = threading.Condition()
        self._real = real

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith((SILENT, RESOLVING)):
            return self._real(host, port, *args, **kwargs)
        with self._changed:
            self._asked.append(name)
            self._changed.notify_all()
        if name.endswith(SILENT):
            self.released.wait(SILENT_FOR_S)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (PUBLIC, int(port)))]

    def asked(self, count: int) -> list[str]:
        """The names looked up, sorted, once `count` lookups have begun: each begins on a thread of its own, which
        the request may have left (its deadline passed) before the thread ran."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self._asked) >= count, ANSWER_WITHIN_S), self._asked
            return sorted(self._asked)


@pytest.fixture
def name_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[NameServers]:
    _all_lookups_ended()  # places another test's lookups still hold would be counted here
    servers = NameServers(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", servers.getaddrinfo)
    # Short, so the test waits little; the bound itself is what is tested, not its length.
    monkeypatch.setattr(webhooks, "SAVE_LOOKUP_TIMEOUT_S", 0.2, raising=False)
    try:
        yield servers
    finally:
        servers.released.set()
        _all_lookups_ended()


@pytest.fixture
def requests(name_servers: NameServers) -> Iterator[ThreadPoolExecutor]:
    """Threads to send requests on, so that one the save holds is a failed test, not a test that hangs; given back
    once the silent lookups are released."""
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="save-lookup-test")
    try:
        yield pool
    finally:
        name_servers.released.set()
        pool.shutdown(wait=True)


def _answered(requests: ThreadPoolExecutor, send: Callable[[], httpx.Response]) -> httpx.Response:
    """The answer to `send`, which must come while the silent lookups still block."""
    return requests.submit(send).result(timeout=ANSWER_WITHIN_S)


def _create(api: ApiHarness, headers: dict[str, str], url: str) -> Callable[[], httpx.Response]:
    return lambda: api.client.post("/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=headers)


def _refused_in_time(answer: httpx.Response, host: str) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["type"].endswith("/webhook-url-refused"), problem
    assert f"could not resolve {host} in time" in problem["detail"], problem
    assert [error["pointer"] for error in problem["errors"]] == ["/url"], problem


def _listed(api: ApiHarness, headers: dict[str, str]) -> list[str]:
    answer = api.client.get("/api/v1/webhooks", headers=headers)
    assert answer.status_code == 200, answer.text
    return [item["url"] for item in answer.json()["items"]]


def test_a_save_whose_host_never_resolves_is_refused_at_its_deadline_and_stores_nothing(
    api: ApiHarness,
    local: None,
    name_servers: NameServers,
    requests: ThreadPoolExecutor,
) -> None:
    _, headers = tenant(api, "save-lookup-silent")
    before = api.table_snapshot("webhook_subscriptions")
    answer = _answered(requests, _create(api, headers, f"https://hooks{SILENT}/in"))
    _refused_in_time(answer, f"hooks{SILENT}")
    assert api.table_snapshot("webhook_subscriptions") == before
    assert _listed(api, headers) == []

    # A change of the URL is checked alike, and keeps the URL it had.
    receiver = Receiver()
    created = api.client.post("/api/v1/webhooks", json={"url": receiver.url, "event_types": ["*"]}, headers=headers)
    assert created.status_code == 201, created.text
    subscription = created.json()["id"]
    changed = _answered(
        requests,
        lambda: api.client.patch(
            f"/api/v1/webhooks/{subscription}", json={"url": f"https://other{SILENT}/in"}, headers=headers
        ),
    )
    _refused_in_time(changed, f"other{SILENT}")
    assert _listed(api, headers) == [receiver.url]
    assert name_servers.asked(2) == [f"hooks{SILENT}", f"other{SILENT}"]


def test_a_tenants_saves_past_its_share_of_the_lookups_are_refused_and_another_tenants_save_succeeds(
    api: ApiHarness, local: None, name_servers: NameServers, requests: ThreadPoolExecutor
) -> None:
    _, hostile = tenant(api, "save-lookup-hostile")
    _, other = tenant(api, "save-lookup-other")
    before = api.table_snapshot("webhook_subscriptions")
    share = ssrf.MAX_LOOKUPS_PER_TENANT
    # Each of these ends at its deadline, its lookup left to finish alone and holding its place meanwhile.
    for n in range(share):
        _refused_in_time(_answered(requests, _create(api, hostile, f"https://h{n}{SILENT}/in")), f"h{n}{SILENT}")
    for url in (f"https://h{share}{SILENT}/in", f"https://receiver{RESOLVING}/in"):
        busy = _answered(requests, _create(api, hostile, url))
        assert busy.status_code == 429, busy.text
        assert busy.headers["content-type"].startswith("application/problem+json")
        assert busy.headers["retry-after"] == str(webhooks.SAVE_LOOKUP_RETRY_AFTER_S)
        assert busy.json()["type"].endswith("/webhook-url-check-busy"), busy.json()
    assert api.table_snapshot("webhook_subscriptions") == before
    # Another tenant's save, to a name that resolves, takes a place of its own share and succeeds.
    created = _answered(requests, _create(api, other, f"https://receiver{RESOLVING}/in"))
    assert created.status_code == 201, created.text
    assert _listed(api, other) == [f"https://receiver{RESOLVING}/in"]
    assert _listed(api, hostile) == []
    looked_up = sorted([*(f"h{n}{SILENT}" for n in range(share)), f"receiver{RESOLVING}"])
    assert name_servers.asked(share + 1) == looked_up


def test_one_host_that_never_resolves_takes_only_its_places_of_the_tenants_share(
    api: ApiHarness, local: None, name_servers: NameServers, requests: ThreadPoolExecutor
) -> None:
    _, headers = tenant(api, "save-lookup-one-host")
    for _ in range(ssrf.MAX_LOOKUPS_PER_HOST):
        _refused_in_time(_answered(requests, _create(api, headers, f"https://same{SILENT}/in")), f"same{SILENT}")
    again = _answered(requests, _create(api, headers, f"https://same{SILENT}/in"))
    assert again.status_code == 429, again.text
    assert again.json()["type"].endswith("/webhook-url-check-busy"), again.json()
    # The tenant's other names still have places.
    created = _answered(requests, _create(api, headers, f"https://receiver{RESOLVING}/in"))
    assert created.status_code == 201, created.text
    assert (
        name_servers.asked(ssrf.MAX_LOOKUPS_PER_HOST + 1)
        == [f"receiver{RESOLVING}"] + [f"same{SILENT}"] * ssrf.MAX_LOOKUPS_PER_HOST
    )


def test_a_retried_create_gets_its_first_answer_while_its_host_cannot_be_looked_up(
    api: ApiHarness,
    local: None,
    name_servers: NameServers,
    requests: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The URL was checked before the key was looked up: a client retrying a create that took place (its answer
    # lost) got 422 or 429 while the host's name servers were slow, although the subscription existed.
    _, headers = tenant(api, "save-lookup-replay")
    keyed = {**headers, "Idempotency-Key": "create-receiver-1"}
    url = f"https://receiver{RESOLVING}/in"
    first = _answered(requests, _create(api, keyed, url))
    assert first.status_code == 201, first.text

    def gone_silent(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        silent = f"{name}{SILENT}" if name.endswith(RESOLVING) else host
        return name_servers.getaddrinfo(silent, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", gone_silent)
    again = _answered(requests, _create(api, keyed, url))
    assert again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers["ETag"] == first.headers["ETag"]
    # A new create of the same URL is still checked, and refused at the lookup's deadline.
    _refused_in_time(_answered(requests, _create(api, headers, url)), f"receiver{RESOLVING}")
    assert _listed(api, headers) == [url]
