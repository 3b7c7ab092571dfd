# intent_ref: platform.modules
"""A guarded request's deadline covers resolving its host: a tenant's slow name server cannot hold a sender."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import httpx
import pytest

from shared.modules import StepFailed, ssrf
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


def test_lookups_left_behind_by_their_deadline_are_bounded_per_host_and_in_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each lookup past its deadline finishes alone on a thread of its own: a tenant's name that never answers,
    # asked every tenth of a second (a health probe), left hundreds of threads in the worker every tenant shares.
    monkeypatch.setattr(ssrf, "MAX_LOOKUPS", 3)
    monkeypatch.setattr(ssrf, "LOOKUPS_KEPT_FREE", 0)  # one tenant (the platform's calls) takes every place here
    released = threading.Event()
    started: list[str] = []

    def hanging(host: str, port: int) -> Sequence[str]:
        started.append(host)
        released.wait(10)
        return ["93.184.215.14"]

    transport = httpx.MockTransport(lambda _: httpx.Response(200))
    try:
        with GuardedClient(resolver=hanging, timeout=0.05, transport=transport) as client:
            for _ in range(2):
                with pytest.raises(DeadlineExceeded):
                    client.request("GET", "https://slow.example/")
            with pytest.raises(StepFailed, match="earlier lookups of it .* still wait") as refused:
                client.request("GET", "https://slow.example/")
            assert refused.value.retryable
            with pytest.raises(DeadlineExceeded):
                client.request("GET", "https://other.example/")
            with pytest.raises(StepFailed, match="too many others"):
                client.request("GET", "https://third.example/")
        assert started == ["slow.example", "slow.example", "other.example"]
    finally:
        released.set()
    # Once the lookups end, their places are free again.
    for _ in range(100):
        if ssrf._lookups._total == 0:
            break
        threading.Event().wait(0.02)
    with GuardedClient(resolver=lambda *_: ["93.184.215.14"], timeout=5, transport=transport) as client:
        client.request("GET", "https://slow.example/").close()


def test_an_ip_literal_takes_no_lookup_place(monkeypatch: pytest.MonkeyPatch) -> None:
    # A literal needs no lookup: it took a place of its host's two, so parallel steps to one address failed at random
    # with "earlier lookups of it still wait" while those places were held.
    monkeypatch.setattr(ssrf, "MAX_LOOKUPS", 0)  # every place taken
    resolved: list[str] = []

    def resolver(host: str, port: int) -> Sequence[str]:
        resolved.append(host)
        return [host.strip("[]")]

    transport = httpx.MockTransport(lambda _: httpx.Response(200))
    with GuardedClient(resolver=resolver, timeout=5, transport=transport) as client:
        client.request("GET", "https://93.184.215.14/").close()
        client.request("GET", "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/").close()
        with pytest.raises(StepFailed, match="too many others"):
            client.request("GET", "https://named.example/")
        # A zone suffix may name anything the resolver would look up: not taken for a literal (refused before any
        # lookup since a host holding '%' names nothing a step may reach).
        with pytest.raises(StepFailed, match="holds '%'"):
            client.request("GET", "http://93.184.215.14%25x.slow.example/")
    assert resolved == ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
