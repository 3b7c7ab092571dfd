# intent_ref: platform.modules
"""Name lookups in flight are bounded per tenant too: one tenant's names that never answer leave the others theirs."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from shared.modules import StepFailed, ssrf
from shared.modules.contract import ModuleContext
from shared.modules.http_request import HttpRequestModule
from shared.modules.http_wait_healthy import HttpWaitHealthyModule
from shared.modules.ssrf import DeadlineExceeded, GuardedClient

PUBLIC = "93.184.215.14"
ANSWERING = httpx.MockTransport(lambda _: httpx.Response(200))


class BlackHole:
    """A resolver whose name servers never answer: each lookup blocks until the test releases it."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self._started: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, host: str, port: int) -> Sequence[str]:
        with self._changed:
            self._started.append(host)
            self._changed.notify_all()
        self.released.wait(30)
        return [PUBLIC]

    def started(self, count: int) -> list[str]:
        """The hosts looked up, once `count` lookups have begun: each begins on a thread of its own, which the
        request may have left (its deadline passed) before the thread ran."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self._started) >= count, 10), self._started
            return sorted(self._started)


def _all_lookups_ended() -> None:
    for _ in range(500):
        if ssrf._lookups._total == 0:
            return
        threading.Event().wait(0.02)
    raise AssertionError("lookups still in flight")


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    _all_lookups_ended()  # places another test's lookups still hold would be counted here
    resolver = BlackHole()
    try:
        yield resolver
    finally:
        resolver.released.set()
        _all_lookups_ended()


def _answering(seen: list[str]) -> Callable[[str, int], Sequence[str]]:
    def resolve(host: str, port: int) -> Sequence[str]:
        seen.append(host)
        return [PUBLIC]

    return resolve


def test_a_tenant_whose_names_never_answer_takes_only_its_share_of_the_lookups(black_hole: BlackHole) -> None:
    # Its names past their deadlines took all MAX_LOOKUPS places for the resolver's timeouts, and every other
    # tenant's outbound call in the process then failed "earlier lookups of it (or too many others) still wait".
    hostile, other = uuid.uuid4(), uuid.uuid4()
    outcomes: list[type[BaseException]] = []
    with GuardedClient(resolver=black_hole, timeout=0.05, transport=ANSWERING, tenant=hostile) as client:
        for n in range(ssrf.MAX_LOOKUPS):
            with pytest.raises((DeadlineExceeded, StepFailed)) as failed:
                client.request("POST", f"https://h{n}.black-hole.example/hook")
            outcomes.append(failed.type)
            if failed.type is StepFailed:
                assert isinstance(failed.value, StepFailed)
                assert failed.value.retryable
                assert "still wait" in str(failed.value)
    seen: list[str] = []
    with GuardedClient(resolver=_answering(seen), timeout=5, transport=ANSWERING, tenant=other) as client:
        client.request("POST", "https://receiver.example/hook").close()
    # The platform's own calls (no tenant) have a share of their own as well.
    with GuardedClient(resolver=_answering(seen), timeout=5, transport=ANSWERING) as client:
        client.request("GET", "https://platform.example/").close()
    assert seen == ["receiver.example", "platform.example"]
    share = ssrf.MAX_LOOKUPS_PER_TENANT
    assert outcomes == [DeadlineExceeded] * share + [StepFailed] * (ssrf.MAX_LOOKUPS - share)
    assert black_hole.started(share) == sorted(f"h{n}.black-hole.example" for n in range(share))


def test_the_bound_per_host_counts_each_tenants_lookups_of_it_apart(black_hole: BlackHole) -> None:
    # One tenant's lookups of a name that never answers refused another's lookups of the same name.
    first, second = uuid.uuid4(), uuid.uuid4()
    with GuardedClient(resolver=black_hole, timeout=0.05, transport=ANSWERING, tenant=first) as client:
        for _ in range(ssrf.MAX_LOOKUPS_PER_HOST):
            with pytest.raises(DeadlineExceeded):
                client.request("GET", "https://shared.example/")
        with pytest.raises(StepFailed, match="earlier lookups of it .* still wait") as refused:
            client.request("GET", "https://shared.example/")
        assert refused.value.retryable
    seen: list[str] = []
    with GuardedClient(resolver=_answering(seen), timeout=5, transport=ANSWERING, tenant=second) as client:
        client.request("GET", "https://shared.example/").close()
    with GuardedClient(resolver=black_hole, timeout=0.05, transport=ANSWERING, tenant=second) as client:
        with pytest.raises(DeadlineExceeded):
            client.request("GET", "https://shared.example/")
    assert seen == ["shared.example"]
    assert black_hole.started(ssrf.MAX_LOOKUPS_PER_HOST + 1) == ["shared.example"] * (ssrf.MAX_LOOKUPS_PER_HOST + 1)


def _context(tenant: uuid.UUID) -> ModuleContext:
    return ModuleContext(tenant, str(uuid.uuid4()), "step-1", 1, deadline=time.monotonic() + 0.05)


def _request(module: Any, tenant: uuid.UUID, url: str) -> None:
    module.run(_context(tenant), module.params_model.model_validate({"url": url}))


@pytest.mark.parametrize(
    "make",
    [
        lambda resolver: HttpRequestModule(resolver=resolver, timeout=0.05, allow_private=False),
        lambda resolver: HttpWaitHealthyModule(resolver=resolver, sleep=lambda _: None, allow_private=False),
    ],
    ids=["http.request", "http.wait_healthy"],
)
def test_a_step_counts_its_lookups_against_its_own_tenant(
    black_hole: BlackHole, make: Callable[[BlackHole], Any]
) -> None:
    module = make(black_hole)
    hostile, other = uuid.uuid4(), uuid.uuid4()
    refusals = 0
    for n in range(ssrf.MAX_LOOKUPS):
        with pytest.raises(StepFailed) as failed:
            _request(module, hostile, f"https://h{n}.black-hole.example/")
        refusals += "still wait" in str(failed.value)
    share = ssrf.MAX_LOOKUPS_PER_TENANT
    assert black_hole.started(share) == sorted(f"h{n}.black-hole.example" for n in range(share))
    assert refusals == ssrf.MAX_LOOKUPS - share
    # Another tenant's step still looks its host up (its name server is silent too, so the step fails by its
    # deadline, not for want of a place).
    with pytest.raises(StepFailed) as failed:
        _request(module, other, "https://other-tenant.example/")
    assert "still wait" not in str(failed.value)
    assert "other-tenant.example" in black_hole.started(share + 1)


def test_four_tenants_at_their_most_leave_a_lookup_place_for_a_fifth(black_hole: BlackHole) -> None:
    # Four tenants' shares are every place in the process: four tenants pointing steps at names that never answer
    # refused every other tenant's outbound calls (and webhook URL checks) "earlier lookups ... still wait".
    hostile = [uuid.uuid4() for _ in range(ssrf.MAX_LOOKUPS // ssrf.MAX_LOOKUPS_PER_TENANT)]
    taken: dict[uuid.UUID, int] = {}
    for index, tenant in enumerate(hostile):
        with GuardedClient(resolver=black_hole, timeout=0.05, transport=ANSWERING, tenant=tenant) as client:
            for n in range(ssrf.MAX_LOOKUPS_PER_TENANT):
                with pytest.raises((DeadlineExceeded, StepFailed)) as failed:
                    client.request("GET", f"https://t{index}-h{n}.black-hole.example/")
                taken[tenant] = taken.get(tenant, 0) + (failed.type is DeadlineExceeded)
    seen: list[str] = []
    with GuardedClient(resolver=_answering(seen), timeout=5, transport=ANSWERING, tenant=uuid.uuid4()) as client:
        client.request("GET", "https://fifth-tenant.example/").close()
    assert seen == ["fifth-tenant.example"]
    # A tenant with a lookup in flight took another only while more than LOOKUPS_KEPT_FREE places stayed free.
    assert sum(taken.values()) <= ssrf.MAX_LOOKUPS - ssrf.LOOKUPS_KEPT_FREE + 1
    assert taken[hostile[0]] == ssrf.MAX_LOOKUPS_PER_TENANT
    assert all(count >= 1 for count in taken.values())
    # And a step's lookup of a fifth tenant's, its name server silent too, fails by its deadline, not for a place.
    with GuardedClient(resolver=black_hole, timeout=0.05, transport=ANSWERING, tenant=uuid.uuid4()) as client:
        with pytest.raises(DeadlineExceeded):
            client.request("GET", "https://another-fifth.example/")
