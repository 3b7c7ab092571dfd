# intent_ref: platform.events
"""Webhook URLs a tenant or its receiver can make up (ADR 0030): a host that is not a valid name or a port that is no
port is refused with 422 when subscribed, and a failed attempt when a receiver redirects to it; whatever a send
raises is a failed attempt, and a run that fails midway gives back the heads it had not sent. No error recorded of a
send, nor the `webhook.disabled` event made of it, quotes more of a URL than its scheme, host and port."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.db.session import tenant_transaction
from shared.events import webhook_store, webhooks
from shared.events.relay import relay_tenant
from shared.modules.contract import StepFailed
from shared.modules.ssrf import GuardedClient
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import (  # noqa: F401  # `local`: the fixture
    Publisher,
    RawAnswer,
    Receiver,
    emit,
    local,
    tenant,
)

pytestmark = pytest.mark.integration

MALFORMED = [
    "http://xn--/",  # an A-label with nothing encoded
    "http://xn--a.com/",  # an A-label that decodes to a code point IDNA forbids
    "http://xn--ls8h.la/",  # an emoji name, which IDNA 2008 refuses
    "http://127.0.0.1:99999999999999999999/",  # a port past what the resolver takes
    "http://127.0.0.1:65536/",
    "http://127.0.0.1:0/",
]


def _log(api: ApiHarness, subscription: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    answer = api.client.get(f"/api/v1/webhooks/{subscription['id']}/deliveries", headers=headers)
    return list(answer.json()["items"])


@pytest.mark.parametrize("url", MALFORMED)
def test_a_url_whose_host_or_port_is_malformed_is_refused_when_subscribed_or_changed(
    api: ApiHarness, local: None, url: str
) -> None:
    _, headers = tenant(api, "hooks-malformed")
    refused = api.client.post("/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=headers)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/webhook-url-refused")
    subscription = api.client.post(
        "/api/v1/webhooks", json={"url": Receiver().url, "event_types": ["*"]}, headers=headers
    ).json()
    changed = api.client.patch(f"/api/v1/webhooks/{subscription['id']}", json={"url": url}, headers=headers)
    assert changed.status_code == 422, changed.text
    assert changed.json()["type"].endswith("/webhook-url-refused")
    assert api.client.get(f"/api/v1/webhooks/{subscription['id']}", headers=headers).json()["url"] != url


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("http://xn--/", "Location is not a URL that may be called"),
        # A 307 is followed (the same POST again), each hop checked: the malformed one is the failed attempt.
        ("http://127.0.0.1:99999999999999999999/", "port must be between"),
    ],
)
def test_a_redirect_to_a_malformed_host_or_port_is_a_failed_attempt_and_holds_up_no_other_subscription(
    api: ApiHarness, local: None, location: str, why: str
) -> None:
    # Raised out of the send, it would end the tenant's run with no attempt counted: the delivery back every minute
    # for ever, and the tenant's other heads claimed with it not sent.
    redirecting = RawAnswer(
        f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    good = Receiver()
    owner, headers = tenant(api, "hooks-redirect-malformed")
    bad = api.client.post(
        "/api/v1/webhooks", json={"url": redirecting.url, "event_types": ["*"]}, headers=headers
    ).json()
    api.client.post("/api/v1/webhooks", json={"url": good.url, "event_types": ["*"]}, headers=headers)
    ids = emit(owner.id, "test.redirected")

    result = webhooks.deliver_tenant(owner.id)
    assert (result.delivered, result.failed_attempts) == (1, 1)
    assert [e["id"] for e in good.events()] == ids
    log = _log(api, bad, headers)
    assert [(d["state"], d["attempts"]) for d in log] == [("pending", 1)]
    assert why in log[0]["last_error"], log[0]["last_error"]


def test_an_unexpected_error_of_a_send_is_a_failed_attempt(api: ApiHarness, local: None) -> None:
    owner, headers = tenant(api, "hooks-send-raises")
    subscription = api.client.post(
        "/api/v1/webhooks", json={"url": Receiver().url, "event_types": ["*"]}, headers=headers
    ).json()
    emit(owner.id, "test.unexpected")

    class Raising(GuardedClient):
        def request(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("no sender expects this " + "x" * 5000)

    result = webhooks.deliver_tenant(owner.id, client_factory=lambda hosts: Raising(hosts, allow_private=True))
    assert result.failed_attempts == 1
    log = _log(api, subscription, headers)
    assert [(d["state"], d["attempts"]) for d in log] == [("pending", 1)]
    assert log[0]["last_error"].startswith("RuntimeError: no sender expects this xxx")
    assert len(log[0]["last_error"]) <= webhooks.MAX_ERROR_CHARS


def test_the_heads_a_failed_run_had_not_sent_are_due_again_at_once(
    api: ApiHarness, local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, headers = tenant(api, "hooks-run-fails")
    receiver = Receiver()
    for _ in range(2):  # two subscriptions: two heads claimed together
        api.client.post("/api/v1/webhooks", json={"url": receiver.url, "event_types": ["*"]}, headers=headers)
    emit(owner.id, "test.head")

    def failing(*_: Any) -> None:
        raise RuntimeError("the record of the first send failed")

    recorded = webhook_store.record_success
    monkeypatch.setattr(webhook_store, "record_success", failing)
    with pytest.raises(RuntimeError, match="the record of the first send failed"):
        webhooks.deliver_tenant(owner.id)
    assert len(receiver.received) == 1
    with tenant_transaction(owner.id) as conn:
        rows = conn.execute(
            "SELECT attempts, next_attempt_at <= clock_timestamp() AS due FROM app.webhook_deliveries"
            " WHERE state = 'pending' ORDER BY due"
        ).fetchall()
    # The one sent keeps its hold (it reached its receiver); the other was never sent and goes with the next run.
    assert [(row["attempts"], row["due"]) for row in rows] == [(0, False), (0, True)]
    monkeypatch.setattr(webhook_store, "record_success", recorded)
    assert webhooks.deliver_tenant(owner.id).delivered == 1


SECRET_PATH = "/services/T0PATHSECRET/B0PATHSECRET"
SECRET_QUERY = "token=QUERYSECRET"


def _looping_receiver() -> tuple[str, int]:
    """A receiver that redirects every request to itself (a misconfigured one), at a URL holding secrets."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802  # the stdlib's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", self.path)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}{SECRET_PATH}?{SECRET_QUERY}", server.server_port


def _secret_in(text: str) -> bool:
    return any(secret in text for secret in ("PATHSECRET", "QUERYSECRET"))


def test_the_webhook_disabled_event_of_a_redirect_loop_names_no_secret_of_its_url(api: ApiHarness, local: None) -> None:
    # The error quoted the subscription's whole URL, and after the last attempt the `webhook.disabled` event carried
    # it to platform-events and to the tenant's other receivers.
    other = Receiver()
    owner, headers = tenant(api, "hooks-loop-secrets")
    url, port = _looping_receiver()
    looping = api.client.post("/api/v1/webhooks", json={"url": url, "event_types": ["intent.created"]}, headers=headers)
    assert looping.status_code == 201, looping.text
    watching = {"url": other.url, "event_types": ["webhook.disabled"]}
    assert api.client.post("/api/v1/webhooks", json=watching, headers=headers).status_code == 201
    emit(owner.id, "intent.created")
    for _ in range(webhooks.MAX_ATTEMPTS):
        webhooks.deliver_tenant(owner.id, backoff_base_s=0.0)
    log = _log(api, looping.json(), headers)
    assert [(d["state"], d["attempts"]) for d in log] == [("failed", webhooks.MAX_ATTEMPTS)]
    assert f"more than 5 redirects from http://127.0.0.1:{port}" in log[0]["last_error"]
    assert not _secret_in(log[0]["last_error"])

    hub = Publisher()
    relay_tenant(owner.id, hub)  # the event goes to platform-events, and to the other subscription
    assert webhooks.deliver_tenant(owner.id).delivered == 1
    disabled = [event.body for event in hub.sent if event.body["type"] == "webhook.disabled"]
    assert len(disabled) == 1 and [e["type"] for e in other.events()] == ["webhook.disabled"]
    assert other.events()[0]["data"]["reason"] == disabled[0]["data"]["reason"]
    assert f"from http://127.0.0.1:{port}" in disabled[0]["data"]["reason"]
    assert not _secret_in(json.dumps(disabled) + json.dumps(other.events()))


@pytest.mark.parametrize("error", [StepFailed, RuntimeError])
def test_an_error_that_quotes_the_url_is_recorded_without_its_path_or_query(
    api: ApiHarness, local: None, error: type[Exception]
) -> None:
    # Whatever raised it (the guard, the HTTP library, anything else), a send's error is recorded with each URL in it
    # cut to its scheme, host and port: the delivery log and the `webhook.disabled` reason are made of it.
    owner, headers = tenant(api, f"hooks-error-quotes-url-{error.__name__.lower()}")
    receiver = Receiver()
    url = receiver.url + f"{SECRET_PATH}?{SECRET_QUERY}"
    subscription = api.client.post("/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=headers).json()
    emit(owner.id, "test.quoted")

    class Quoting(GuardedClient):
        def request(self, method: str, url: str, **kwargs: Any) -> Any:
            raise error(f"could not send to {url}: gone")

    result = webhooks.deliver_tenant(owner.id, client_factory=lambda hosts: Quoting(hosts, allow_private=True))
    assert result.failed_attempts == 1
    recorded = _log(api, subscription, headers)[0]["last_error"]
    origin = receiver.url.removesuffix("/hooks")
    assert f"could not send to {origin}/REDACTED: gone" in recorded and not _secret_in(recorded)
