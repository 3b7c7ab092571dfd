# intent_ref: platform.modules
"""Outbound calls keep a tenant's secrets to themselves: no URL in the logs, no header value in errors, no cookies."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.modules import ModuleContext, http_request, invoke
from shared.modules.contract import StepFailed
from shared.modules.http_request import HttpRequestModule
from shared.modules.ssrf import GuardedClient


class Server:
    """A local HTTP server that records each request's host, path and cookie. `/login` sets a cookie and redirects
    to `b.example` on the same port; `/set` sets one and answers 200; `/loop...` redirects to itself; anything else
    answers 200."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  # the stdlib's name
                server.seen.append(
                    {"host": self.headers.get("Host"), "path": self.path, "cookie": self.headers.get("Cookie")}
                )
                if self.path.startswith("/loop"):
                    self.send_response(307)
                    self.send_header("Location", self.path)  # a misconfigured receiver: a redirect loop
                elif self.path in ("/login", "/set"):
                    self.send_response(302 if self.path == "/login" else 200)
                    self.send_header("Set-Cookie", "session=COOKIESECRET; Path=/")
                    if self.path == "/login":
                        self.send_header("Location", f"http://b.example:{server.port}/landing")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.httpd.shutdown()


def _to_loopback(host: str, port: int) -> list[str]:
    # Every name on one address, as behind a shared front door.
    return ["127.0.0.1"]


def _ctx() -> ModuleContext:
    hosts = ["127.0.0.1", "a.example", "b.example"]
    return ModuleContext(uuid.uuid4(), "e", "s", 1, tenant_settings={"allowed_hosts": hosts})


def test_a_steps_call_logs_no_part_of_its_url_a_secret_can_be_in(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # The Functions worker sets the root logger to INFO and forwards every record to the host, and httpx logged each
    # request's full URL at INFO.
    caplog.set_level(logging.INFO)
    url = f"http://svc:PASSSECRET@127.0.0.1:{server.port}/hooks/PATHSECRET?api_key=QUERYSECRET"
    output = invoke(HttpRequestModule(allow_private=True), _ctx(), {"url": url})
    assert output["status"] == 200 and server.seen
    with GuardedClient(["127.0.0.1"], allow_private=True) as client:
        client.request("GET", url).close()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in ("PASSSECRET", "PATHSECRET", "QUERYSECRET"):
        assert secret not in logged


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"Authorization": "Bearer HDRSECRET\n"}, "'Authorization'"),
        ({"X-Api-Key": "HDRSECRET\r\nX-Injected: 1"}, "'X-Api-Key'"),
        ({"X-Api-Key": "HDR\x00SECRET"}, "'X-Api-Key'"),
        ({"X-Api-Key": "HDRSECRET "}, "'X-Api-Key'"),
        ({"X-Api-Key": "HDRSECRET\u00e9"}, "'X-Api-Key'"),
        ({"Authorization: Bearer HDRSECRET": "x"}, "'Authorization'"),
    ],
)
def test_a_header_http_cannot_carry_fails_the_step_naming_it_not_its_value(
    server: Server, headers: dict[str, str], named: str
) -> None:
    # A rendered value with a trailing line break (`Bearer ${inputs.token}`) was quoted whole in the step's error,
    # which goes to telemetry.
    url = f"http://127.0.0.1:{server.port}/x"
    with pytest.raises(StepFailed) as failed:
        invoke(HttpRequestModule(allow_private=True), _ctx(), {"url": url, "headers": headers})
    assert "SECRET" not in failed.value.message and named in failed.value.message
    assert failed.value.retryable is False
    assert server.seen == []  # refused before anything was sent


def test_the_http_librarys_refusal_of_a_header_does_not_quote_it(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the check above misses, the library's own error (which quotes the value) stays out of the message.
    monkeypatch.setattr(http_request, "header_fault", lambda headers: None)
    url = f"http://127.0.0.1:{server.port}/x"
    for value in ("Bearer HDRSECRET\n", "HDRSECRET\u00e9"):
        with pytest.raises(StepFailed) as failed:
            invoke(HttpRequestModule(allow_private=True), _ctx(), {"url": url, "headers": {"Authorization": value}})
        assert "SECRET" not in failed.value.message and failed.value.retryable is False


def test_no_cookie_a_receiver_sets_is_ever_sent(server: Server) -> None:
    # The client's jar kept Set-Cookie under the pinned address and sent it to every host and port there: past a
    # cross-origin redirect that drops the caller's credentials, and on the client's later requests.
    with GuardedClient(["a.example", "b.example"], resolver=_to_loopback, allow_private=True) as client:
        client.request("GET", f"http://a.example:{server.port}/login").close()
        client.request("GET", f"http://a.example:{server.port}/set").close()
        client.request("GET", f"http://a.example:{server.port}/again").close()
        client.request("GET", f"http://b.example:{server.port}/other").close()
    assert [s["path"] for s in server.seen] == ["/login", "/landing", "/set", "/again", "/other"]
    assert [s["cookie"] for s in server.seen] == [None] * 5
    # A tenant's own Cookie header still goes to the origin it was written for.
    with GuardedClient(["a.example"], resolver=_to_loopback, allow_private=True) as client:
        client.request("GET", f"http://a.example:{server.port}/mine", headers={"Cookie": "own=1"}).close()
    assert server.seen[-1]["cookie"] == "own=1"


def test_too_many_redirects_name_the_origin_not_the_url(server: Server) -> None:
    # The message quoted the whole URL, and a webhook delivery's error goes into the `webhook.disabled` event that
    # platform-events and the tenant's other receivers get: the path and query are a receiver's secrets.
    url = f"http://svc:PASSSECRET@127.0.0.1:{server.port}/loop/PATHSECRET?api_key=QUERYSECRET"
    with GuardedClient(["127.0.0.1"], allow_private=True) as client, pytest.raises(StepFailed) as failed:
        client.request("GET", url)
    assert failed.value.message == f"more than 5 redirects from http://127.0.0.1:{server.port}"
    assert failed.value.retryable is False
    assert len(server.seen) == 6  # the request and five redirects followed
