# intent_ref: platform.modules
"""QP_ALLOW_PRIVATE_NETWORK_HOSTS: with it off, no allow-list entry and no resolution opens a private network."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from shared.config import get_settings
from shared.events.webhooks import WebhookUrlRefusedError, check_subscription_url
from shared.modules import ModuleContext, run_module
from shared.modules.http_request import HttpRequestModule
from shared.modules.http_wait_healthy import HttpWaitHealthyModule
from shared.modules.ssrf import GuardedClient, UrlRefused, allow_list_refusal, check_url, private_network_allowed
from shared.tenants.settings import MAX_ALLOWED_HOSTS, settings_problems

PRIVATE_ENTRIES = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "::1",
    "[::1]",
    "10.0.0.5",
    "192.168.1.1",
    "172.16.0.1",
    "fd00::1",
    "169.254.1.1",
    "fe80::1",
    "0.0.0.0",
    "::",
    "100.64.0.1",
    "::ffff:127.0.0.1",
    "localhost",
    "LOCALHOST.",
    "api.localhost",
    "db.internal",
    "metadata.google.internal",
    "printer.local",
    "nas.home.arpa",
]
METADATA_ENTRIES = [
    "169.254.169.254",
    "fd00:ec2::254",
    "100.100.100.200",
    "::ffff:169.254.169.254",
    "168.63.129.16",
    "::ffff:168.63.129.16",
]
PUBLIC_ENTRIES = [
    "api.example.com",
    "93.184.215.14",
    "2606:4700::1111",
    "internal.example.com",
    "localhost.example.com",
]


def resolving_to(*addresses: str):  # type: ignore[no-untyped-def]
    def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolver


def ctx(**settings: object) -> ModuleContext:
    return ModuleContext(uuid.uuid4(), str(uuid.uuid4()), "step-1", 1, tenant_settings=settings)


# ---- the allow-list, checked when a tenant writes it ----------------------------------------------------------


@pytest.mark.parametrize("entry", PRIVATE_ENTRIES)
def test_private_entries_are_refused_when_private_networks_are_closed(entry: str) -> None:
    reason = allow_list_refusal(entry, allow_private=False)
    assert reason is not None and repr(entry) in reason


@pytest.mark.parametrize("entry", PRIVATE_ENTRIES)
def test_private_entries_are_accepted_when_private_networks_are_open(entry: str) -> None:
    assert allow_list_refusal(entry, allow_private=True) is None


@pytest.mark.parametrize("entry", METADATA_ENTRIES)
@pytest.mark.parametrize("allow_private", [False, True])
def test_metadata_entries_are_always_refused(entry: str, allow_private: bool) -> None:
    reason = allow_list_refusal(entry, allow_private=allow_private)
    assert reason is not None and "cloud metadata" in reason


@pytest.mark.parametrize("entry", PUBLIC_ENTRIES)
def test_public_entries_are_accepted(entry: str) -> None:
    assert allow_list_refusal(entry, allow_private=False) is None


def test_settings_problems_name_each_refused_entry() -> None:
    change = {"allowed_hosts": ["api.example.com", "127.0.0.1", "db.internal", 7, ""], "other": True}
    problems = settings_problems(change, allow_private=False)
    assert [at for at, _ in problems] == [f"/settings/allowed_hosts/{index}" for index in (1, 2, 3, 4)]
    assert "'127.0.0.1'" in problems[0][1] and "loopback" in problems[0][1]
    assert "'db.internal'" in problems[1][1]
    assert settings_problems(change | {"allowed_hosts": ["127.0.0.1", "db.internal"]}, allow_private=True) == []


def test_settings_problems_check_the_shape() -> None:
    assert settings_problems({"allowed_hosts": "127.0.0.1"}, allow_private=True) == [
        ("/settings/allowed_hosts", "allowed_hosts is a list of host names")
    ]
    assert settings_problems({"allowed_hosts": ["a.example"] * (MAX_ALLOWED_HOSTS + 1)}, allow_private=True)
    assert settings_problems({"allowed_hosts": None}, allow_private=False) == []
    assert settings_problems({"feature.x": True}, allow_private=False) == []


# ---- the guard, at request time ------------------------------------------------------------------------------


def test_an_allow_listed_loopback_host_is_refused_when_private_networks_are_closed() -> None:
    # An entry written before the rule (or by a deployment that had the setting on) opens nothing.
    with pytest.raises(UrlRefused, match=r"127.0.0.1 resolves to a non-public address \(loopback\) .*private networks"):
        check_url("http://127.0.0.1:9/", ["127.0.0.1"], allow_private=False)
    assert check_url("http://127.0.0.1:9/", ["127.0.0.1"], allow_private=True).addresses == ("127.0.0.1",)


def test_a_public_name_resolving_privately_is_refused_even_when_allow_listed() -> None:
    resolver = resolving_to("10.1.2.3")
    with pytest.raises(UrlRefused, match=r"api.example.com resolves to a non-public address \(private\)"):
        check_url("https://api.example.com/", ["api.example.com"], resolver, allow_private=False)
    assert check_url("https://api.example.com/", ["api.example.com"], resolver, allow_private=True).addresses == (
        "10.1.2.3",
    )


def test_the_default_is_closed() -> None:
    with pytest.raises(UrlRefused, match="private networks"):
        check_url("https://api.example.com/", ["api.example.com"], resolving_to("192.168.0.4"))


def test_metadata_stays_refused_with_private_networks_open() -> None:
    with pytest.raises(UrlRefused, match="cloud metadata"):
        check_url("http://meta.example/", ["meta.example"], resolving_to("169.254.169.254"), allow_private=True)


@pytest.mark.parametrize("allow_private", [False, True])
def test_public_addresses_pass_either_way(allow_private: bool) -> None:
    target = check_url("https://api.example.com/x", (), resolving_to("93.184.215.14"), allow_private=allow_private)
    assert target.addresses == ("93.184.215.14",) and target.host == "api.example.com"


@pytest.mark.parametrize("allow_private, reached", [(True, True), (False, False)])
def test_guarded_client_connects_only_when_open(allow_private: bool, reached: bool) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    with GuardedClient(
        ["svc.example"],
        resolver=resolving_to("10.0.0.9"),
        transport=httpx.MockTransport(answer),
        allow_private=allow_private,
    ) as client:
        if reached:
            client.request("GET", "http://svc.example/health").close()
        else:
            with pytest.raises(UrlRefused):
                client.request("GET", "http://svc.example/health")
    assert seen == (["http://10.0.0.9/health"] if reached else [])


@pytest.mark.parametrize(
    "module_action, module",
    [
        ("http.request", HttpRequestModule(resolver=resolving_to("127.0.0.1"), allow_private=False)),
        ("http.wait_healthy", HttpWaitHealthyModule(resolver=resolving_to("127.0.0.1"), allow_private=False)),
    ],
)
def test_modules_refuse_allow_listed_loopback_when_closed(module_action: str, module: object) -> None:
    with pytest.raises(UrlRefused, match=r"non-public address \(loopback\) .*private networks"):
        run_module(
            module_action, ctx(allowed_hosts=["svc.example"]), {"url": "http://svc.example/"}, {module_action: module}
        )  # type: ignore[dict-item]


# ---- the setting ---------------------------------------------------------------------------------------------


@pytest.fixture()
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("QP_DATABASE_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.delenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_the_setting_is_off_unless_turned_on(settings_env: pytest.MonkeyPatch) -> None:
    assert private_network_allowed() is False
    settings_env.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "true")
    get_settings.cache_clear()
    assert private_network_allowed() is True
    assert private_network_allowed(False) is False  # an injected choice wins


def test_modules_read_the_setting_when_not_told(settings_env: pytest.MonkeyPatch) -> None:
    module = HttpRequestModule(resolver=resolving_to("127.0.0.1"))
    with pytest.raises(UrlRefused, match="private networks"):
        run_module(
            "http.request", ctx(allowed_hosts=["svc.example"]), {"url": "http://127.0.0.1:9/"}, {"http.request": module}
        )
    settings_env.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "true")
    get_settings.cache_clear()
    with pytest.raises(UrlRefused, match="allowed_hosts"):  # open, but this host is not on the allow-list
        run_module(
            "http.request", ctx(allowed_hosts=["svc.example"]), {"url": "http://127.0.0.1:9/"}, {"http.request": module}
        )


# ---- Azure's platform address ----------------------------------------------------------------------------------

WIRESERVER = "168.63.129.16"
"""WireServer, the platform's DNS resolver and health probes: a public address that hands out a machine's goal state,
extension settings and certificates, so refused like the metadata endpoints."""


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("url", [f"http://{WIRESERVER}/machine?comp=goalstate", "http://wire.example/machine"])
def test_the_azure_platform_address_is_refused_even_when_allow_listed(url: str, allow_private: bool) -> None:
    with pytest.raises(UrlRefused, match=r"resolves to a non-public address \(cloud metadata\)"):
        check_url(url, [WIRESERVER, "wire.example"], resolving_to(WIRESERVER), allow_private=allow_private)


@pytest.mark.parametrize("open_", [False, True])
def test_a_webhook_url_at_the_azure_platform_address_is_refused(settings_env: pytest.MonkeyPatch, open_: bool) -> None:
    if open_:
        settings_env.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "true")
        get_settings.cache_clear()
    with pytest.raises(WebhookUrlRefusedError, match="cloud metadata"):
        check_subscription_url(f"https://{WIRESERVER}/machine?comp=goalstate", [WIRESERVER], environment="prod")


@pytest.mark.parametrize("allow_private", [False, True])
def test_a_redirect_to_the_azure_platform_address_is_refused(allow_private: bool) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.host == "20.10.10.10":  # the tenant's public receiver sends the request on
            return httpx.Response(302, headers={"location": f"http://{WIRESERVER}/machine?comp=goalstate"})
        return httpx.Response(200, text="<GoalState/>")

    def resolver(host: str, port: int) -> list[str]:
        return ["20.10.10.10"] if host == "hooks.tenant.example" else [host]

    with GuardedClient(
        [WIRESERVER], resolver=resolver, transport=httpx.MockTransport(answer), allow_private=allow_private
    ) as client:
        with pytest.raises(UrlRefused, match=f"{WIRESERVER} resolves to a non-public address \\(cloud metadata\\)"):
            client.request("POST", "https://hooks.tenant.example/h", json_body={"x": 1})
    assert seen == ["https://20.10.10.10/h"]  # the redirect was not followed
