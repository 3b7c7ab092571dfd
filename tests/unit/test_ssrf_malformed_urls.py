# intent_ref: platform.modules
"""The SSRF guard on URLs whose host is not a valid name or whose port is no port: refused (UrlRefused, a step
failure that is not retried), never another error, whether the URL is given or a redirect's Location."""

from __future__ import annotations

import uuid

import httpx
import pytest

from shared.modules import ModuleContext, StepFailed, run_module
from shared.modules.http_request import HttpRequestModule
from shared.modules.ssrf import GuardedClient, UrlRefused, check_url

MALFORMED = [
    "http://xn--/",
    "http://xn--a.com/",
    "http://xn--ls8h.la/",
    "http://xn--zz-zzzzzzzzzzzzzzzzzz.com/",
    "http://a.example:99999999999999999999/",
    "http://a.example:65536/",
    "http://a.example:0/",
    "http://a.example:-1/",
]


def never_resolved(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host}:{port} should have been refused before any lookup")


def public(host: str, port: int) -> list[str]:
    return ["93.184.215.14"]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_host_or_port_is_refused_before_any_lookup(url: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        check_url(url, (), never_resolved)
    assert refused.value.retryable is False


def test_a_resolver_that_overflows_is_a_failure_to_resolve() -> None:
    def overflowing(host: str, port: int) -> list[str]:
        raise OverflowError("getsockaddrarg: port must be 0-65535.")

    with pytest.raises(StepFailed, match="cannot resolve a.example: getsockaddrarg"):
        check_url("http://a.example/", (), overflowing)


@pytest.mark.parametrize(
    "location", ["http://xn--/", "http://xn--a.com/x", "//xn--ls8h.la/", "http://a.example:99999999999999999999/"]
)
def test_a_redirect_to_a_malformed_host_or_port_is_refused(location: str) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(307, headers={"Location": location})

    with (
        GuardedClient(resolver=public, transport=httpx.MockTransport(answer)) as client,
        pytest.raises(UrlRefused),
    ):
        client.request("POST", "https://hooks.example/in", json_body={})
    assert seen == ["https://93.184.215.14/in"]  # the first hop went, the redirect did not


def test_http_request_to_a_name_idna_refuses_fails_the_step_without_retries() -> None:
    # The parameters accept it (an emoji name, sent as its A-label `xn--ls8h.la`); the guard is what refuses it.
    ctx = ModuleContext(uuid.uuid4(), str(uuid.uuid4()), "step-1", 1, tenant_settings={})
    module = HttpRequestModule(resolver=never_resolved, allow_private=False)
    with pytest.raises(UrlRefused) as refused:
        run_module("http.request", ctx, {"url": "http://\U0001f4a9.la/"}, {"http.request": module})
    assert refused.value.retryable is False
