# intent_ref: platform.events
"""What the SSRF guard tells a tenant and charges its webhook deliveries: a refused URL names the kind of address its
host resolves to, never the address (at save and in the delivery log); a send whose lookup finds the process's places
taken (by other tenants' lookups) is not an attempt; outside local development a redirect off https is not
followed."""

from __future__ import annotations

import contextlib
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.events import webhooks
from shared.modules import StepFailed, ssrf
from shared.modules.ssrf import GuardedClient, LookupsBusy, UrlRefused, check_url
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import (  # noqa: F401  # `local`: the fixture
    RawAnswer,
    Receiver,
    emit,
    local,
    tenant,
)
from tests.unit.test_lookup_bounds_per_tenant import _all_lookups_ended

pytestmark = pytest.mark.integration

NAMED = ".guards.example"
"""Names the stand-in resolver answers with `Names.addresses[name]`; others are looked up as before."""


class Names:
    """The system resolver's stand-in for NAMED names (the harness's own connections are looked up as before)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.addresses: dict[str, str] = {}
        self._real = real

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith(NAMED):
            return self._real(host, port, *args, **kwargs)
        address = self.addresses[name]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    stand_in = Names(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", stand_in.getaddrinfo)
    return stand_in


def _allow(api: ApiHarness, headers: dict[str, str], *hosts: str) -> None:
    changed = api.client.patch("/api/v1/tenant", json={"settings": {"allowed_hosts": list(hosts)}}, headers=headers)
    assert changed.status_code == 200, changed.text


def _subscribe(api: ApiHarness, headers: dict[str, str], url: str) -> dict[str, Any]:
    created = api.client.post("/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=headers)
    assert created.status_code == 201, created.text
    return dict(created.json())


def _log(api: ApiHarness, subscription: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    answer = api.client.get(f"/api/v1/webhooks/{subscription['id']}/deliveries", headers=headers)
    return list(answer.json()["items"])


# F1: the kind of address, never the address


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("fd12:3456::7", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("100.64.0.9", "non-public"),
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_a_refused_name_is_told_the_kind_of_its_address_and_only_the_log_names_the_address(
    caplog: pytest.LogCaptureFixture, address: str, kind: str, allow_private: bool
) -> None:
    # Naming the address made the platform a resolver of private names for tenants: "vm resolves to 10.1.2.3".
    caplog.set_level(logging.INFO, logger="shared.modules.ssrf")
    with pytest.raises(UrlRefused) as refused:
        check_url("https://vm.corp.example/", [], lambda host, port: [address], allow_private=allow_private)
    told = str(refused.value)
    assert told.startswith(f"vm.corp.example resolves to a non-public address ({kind})"), told
    assert address not in told
    assert any(address in record.getMessage() for record in caplog.records), caplog.records


def test_a_save_refused_for_a_private_address_does_not_name_it(api: ApiHarness, names: Names) -> None:
    names.addresses["vm" + NAMED] = "10.20.30.40"
    api.provision("hooks-guards-save")  # private networks closed, as in Azure: no allowed_hosts
    headers = api.headers("hooks-guards-save", ["Tenant.Admin"])
    refused = api.client.post(
        "/api/v1/webhooks", json={"url": f"https://vm{NAMED}/hooks", "event_types": ["*"]}, headers=headers
    )
    assert refused.status_code == 422, refused.text
    assert f"vm{NAMED} resolves to a non-public address (private)" in refused.json()["detail"], refused.text
    assert "10.20.30.40" not in refused.text


def test_a_delivery_refused_for_a_private_address_does_not_log_it_for_the_tenant(
    api: ApiHarness, local: None, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    port = receiver.server.server_port
    names.addresses["vm" + NAMED] = "127.0.0.1"
    owner, headers = tenant(api, "hooks-guards-log")
    _allow(api, headers, "vm" + NAMED)
    subscription = _subscribe(api, headers, f"http://vm{NAMED}:{port}/hooks")
    emit(owner.id, "test.private")
    # The deployment closes private networks after the save: the guard refuses at the delivery.
    monkeypatch.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "false")
    get_settings.cache_clear()

    result = webhooks.deliver_tenant(owner.id)
    assert (result.delivered, result.failed_attempts) == (0, 1)
    [delivery] = _log(api, subscription, headers)
    assert f"vm{NAMED} resolves to a non-public address (loopback)" in delivery["last_error"], delivery
    assert "127.0.0.1" not in delivery["last_error"]
    assert receiver.received == []


# F2: a lookup place other tenants hold is no attempt


@contextlib.contextmanager
def held_places() -> Iterator[Callable[[], None]]:
    """Every lookup place of the process taken by other tenants (one each: the reserve for tenants with no lookup in
    flight taken too), until the function it gives is called, or it ends."""
    _all_lookups_ended()  # places another test's lookups still hold would be counted here
    others = [(uuid.uuid4(), f"silent{i}.elsewhere.example") for i in range(ssrf.MAX_LOOKUPS)]
    for tenant_id, host in others:
        ssrf._lookups.begin(tenant_id, host)
    held = [True]

    def give_back() -> None:
        if held:
            held.clear()
            for tenant_id, host in others:
                ssrf._lookups.end(tenant_id, host)

    try:
        yield give_back
    finally:
        give_back()


def _delivery_and_subscription(tenant_id: Any) -> dict[str, Any]:
    with tenant_transaction(tenant_id) as conn:
        row = conn.execute(
            "SELECT d.state, d.attempts, d.last_error, d.next_attempt_at <= clock_timestamp() AS due,"
            " s.consecutive_failures, s.enabled"
            " FROM app.webhook_deliveries d JOIN app.webhook_subscriptions s ON s.id = d.subscription_id"
        ).fetchone()
    assert row is not None
    return dict(row)


def test_a_send_whose_lookup_finds_no_place_is_not_charged_and_goes_once_places_are_free(
    api: ApiHarness, local: None, names: Names
) -> None:
    # Other tenants' names that never answer held every place: the innocent tenant's delivery was charged a failed
    # attempt for it (backed off, counted towards disabling its subscription after a day of them).
    receiver = Receiver()
    port = receiver.server.server_port
    names.addresses["hooks" + NAMED] = "127.0.0.1"
    owner, headers = tenant(api, "hooks-guards-busy")
    _allow(api, headers, "hooks" + NAMED)
    _subscribe(api, headers, f"http://hooks{NAMED}:{port}/hooks")
    [event_id] = emit(owner.id, "test.busy")
    before = _delivery_and_subscription(owner.id)

    with held_places() as give_back:
        result = webhooks.deliver_tenant(owner.id)
        assert (result.delivered, result.failed_attempts, result.disabled) == (0, 0, 0)
        assert (result.not_attempted, result.left) == (1, 1)
        assert receiver.received == []
        # Given back as it was: due again, its attempts and its subscription's failures unchanged.
        assert (
            _delivery_and_subscription(owner.id)
            == before
            == {
                "state": "pending",
                "attempts": 0,
                "last_error": None,
                "due": True,
                "consecutive_failures": 0,
                "enabled": True,
            }
        )
        give_back()
        result = webhooks.deliver_tenant(owner.id)
    assert (result.delivered, result.failed_attempts, result.not_attempted) == (1, 0, 0)
    assert [e["id"] for e in receiver.events()] == [event_id]
    assert _delivery_and_subscription(owner.id)["attempts"] == 1


PUBLIC = "93.184.215.14"
ANSWERING = httpx.MockTransport(lambda _: httpx.Response(204))


def test_the_guarded_client_raises_lookups_busy_only_before_anything_was_sent() -> None:
    # No place for the first hop's lookup: nothing went out, LookupsBusy (not an attempt). No place for a redirect's:
    # the first receiver was sent the request already, a plain StepFailed (an attempt).
    sent: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        return [PUBLIC]

    with held_places(), GuardedClient(resolver=resolver, transport=ANSWERING, busy=LookupsBusy) as client:
        with pytest.raises(LookupsBusy):
            client.request("POST", "https://first.example/h", json_body={})
    with contextlib.ExitStack() as places:

        def answer(request: httpx.Request) -> httpx.Response:
            sent.append(str(request.url))
            places.enter_context(held_places())  # the places go while the first hop is answered
            return httpx.Response(307, headers={"location": "https://next.example/h"})

        with GuardedClient(resolver=resolver, transport=httpx.MockTransport(answer), busy=LookupsBusy) as client:
            with pytest.raises(StepFailed, match="still wait") as refused:
                client.request("POST", "https://first.example/h", json_body={})
    assert not isinstance(refused.value, LookupsBusy)
    assert sent == [f"https://{PUBLIC}/h"]


# F3: no redirect off https outside local development


def test_a_webhook_client_follows_no_redirect_off_https() -> None:
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.url.scheme}://{request.headers['host']}{request.url.path}")
        if request.headers["host"] == "hooks.example":
            return httpx.Response(308, headers={"location": "http://plain.example/h?token=secret"})
        if request.headers["host"] == "moved.example":
            return httpx.Response(200)
        return httpx.Response(204)

    def resolver(host: str, port: int) -> list[str]:
        return [PUBLIC]

    transport = httpx.MockTransport(answer)
    with GuardedClient(resolver=resolver, transport=transport, https_redirects_only=True) as client:
        with pytest.raises(UrlRefused) as refused:
            client.request("POST", "https://hooks.example/h", json_body={"x": 1})
    assert sent == ["https://hooks.example/h"]  # nothing went to the plain one
    assert str(refused.value).startswith(
        "https://hooks.example redirected to http://plain.example, which is not https"
    ), refused.value
    assert "secret" not in str(refused.value)
    # Another client (a step's) follows it as before.
    with GuardedClient(resolver=resolver, transport=transport) as client:
        assert client.request("POST", "https://hooks.example/h", json_body={"x": 1}).status_code == 204
    assert sent[-1] == "http://plain.example/h"


def test_outside_local_development_a_delivery_redirected_off_https_is_a_failed_attempt(
    api: ApiHarness, local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The signed body went out unencrypted to where an https receiver's 307 or 308 pointed, and counted delivered.
    target = Receiver()
    redirecting = RawAnswer(
        f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target.url}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    owner, headers = tenant(api, "hooks-guards-plain")
    subscription = _subscribe(api, headers, redirecting.url)  # saved in local development, where http is allowed
    emit(owner.id, "test.plain")
    deployed = get_settings().model_copy(update={"QP_ENVIRONMENT": "prod"})
    monkeypatch.setattr(webhooks, "get_settings", lambda: deployed)

    result = webhooks.deliver_tenant(owner.id)
    assert (result.delivered, result.failed_attempts) == (0, 1)
    assert target.received == []
    [delivery] = _log(api, subscription, headers)
    assert (delivery["state"], delivery["attempts"]) == ("pending", 1)
    port = target.server.server_port
    assert f"redirected to http://127.0.0.1:{port}/, which is not https" in delivery["last_error"], delivery
