# intent_ref: platform.modules
"""A guarded request's deadline covers resolving its host: a tenant's slow name server cannot hold a sender."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import httpx
import pytest

from shared.modules.ssrf import DeadlineExceeded, GuardedClient


def test_a_lookup_that_outlasts_the_deadline_ends_the_request_at_the_deadline() -> None:
    # The lookup ran on the sender's thread, so a name whose servers answer slowly (a tenant chooses its own) held a
    # webhook run or a step for the system resolver's own timeouts and retries, whatever the deadline said.
    released = threading.Event()
    looked_up: list[str] = []

    def slow_resolver(host: str, port: int) -> Sequence[str]:
        looked_up.append(host)
        assert released.wait(10), "the request waited for the lookup instead of its deadline"
        return ["93.184.215.14"]

    with GuardedClient(
        resolver=slow_resolver, timeout=0.3, transport=httpx.MockTransport(lambda _: httpx.Response(200))
    ) as client:
        with pytest.raises(DeadlineExceeded, match="no complete answer from slow.example within 0.3 s"):
            client.request("POST", "https://slow.example/hook")
    released.set()
    assert looked_up == ["slow.example"]


def test_a_lookup_within_the_deadline_gives_its_addresses_and_its_errors() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(204)

    def resolver(host: str, port: int) -> Sequence[str]:
        if host == "missing.example":
            raise OSError("Name or service not known")
        return ["93.184.215.14"]

    with GuardedClient(resolver=resolver, timeout=5, transport=httpx.MockTransport(answer)) as client:
        client.request("GET", "http://ok.example/x").close()
        with pytest.raises(Exception, match="cannot resolve missing.example: Name or service not known"):
            client.request("GET", "http://missing.example/x")
    assert seen == ["http://93.184.215.14/x"]
