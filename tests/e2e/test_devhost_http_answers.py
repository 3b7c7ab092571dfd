# intent_ref: platform.devhost
"""The devhost's own HTTP answers: HEAD reaches a function that declares it, and the errors the host produces
itself on a route (no route, a method the route does not take, a body over the host's cap or one that does not
decode) are problem+json."""

from __future__ import annotations

import gzip
import json
import socket
from urllib.parse import urlparse

import httpx
import pytest

from devhost.child import PROJECT_ROOT
from devhost.host import host_body_cap
from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e

APP = PROJECT_ROOT / "tests" / "devhost_http_app"
# The cap of an HTTP function's body (the component routes keep the Functions host's 100 MiB): the app's default
# body limit and the host's margin over it.
HOST_BODY_CAP = host_body_cap(1024 * 1024)


@pytest.fixture()
def base_url(devhost_factory: DevhostFactory) -> str:
    return devhost_factory(app_dir=APP).base_url


def _exchange(base_url: str, request: bytes) -> tuple[list[bytes], dict[str, str], bytes]:
    """Send raw bytes (a request httpx would not send) on a fresh connection; the status line, headers and
    whatever followed them until the server closed."""
    url = urlparse(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.decode().partition(":") for line in lines)}
    return status.split(b" ", 2), headers, body


def test_head_reaches_a_function_that_declares_it_and_gets_no_body(base_url: str) -> None:
    status, headers, body = _exchange(base_url, b"HEAD /api/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status[1] == b"200"
    assert headers["x-seen-method"] == "HEAD"
    assert headers["content-length"] == str(len("seen HEAD"))  # what a GET's body would be
    assert body == b""


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "DELETE"])
def test_a_method_the_route_does_not_take_is_problem_json(base_url: str, method: str) -> None:
    response = httpx.request(method, f"{base_url}/api/probe?x=<script>", headers={"X-Request-Id": "e2e-405"})
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.headers["allow"].split(",")) == {"GET", "HEAD"}
    assert response.headers["x-request-id"] == "e2e-405"
    assert response.json() == {
        "type": "https://quantum-platform.dev/problems/method-not-allowed",
        "title": "Method not allowed",
        "status": 405,
        "detail": "Method Not Allowed",
        "instance": "/api/probe",
    }


@pytest.mark.parametrize(
    ("request_line", "instance"),
    [(b"GET /api/nothing-here", "/api/nothing-here"), (b"CONNECT x:80", ""), (b"OPTIONS *", "*")],
)
def test_a_target_without_a_route_is_problem_json(base_url: str, request_line: bytes, instance: str) -> None:
    status, headers, body = _exchange(base_url, request_line + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status[1] == b"404"
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body) == {
        "type": "https://quantum-platform.dev/problems/not-found",
        "title": "Not found",
        "status": 404,
        "detail": "Not Found",
        "instance": instance,
    }


def test_a_body_over_the_host_cap_is_problem_json(base_url: str) -> None:
    response = httpx.post(f"{base_url}/api/upload", content=b"x" * (HOST_BODY_CAP + 1), timeout=120)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "https://quantum-platform.dev/problems/payload-too-large"
    assert problem["title"] == "Payload too large"
    assert problem["status"] == 413
    assert problem["detail"] == f"Maximum request body size {HOST_BODY_CAP} exceeded."
    # Under the cap the function gets the whole body.
    assert httpx.post(f"{base_url}/api/upload", content=b"x" * 1024).text == "1024"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/probe"), ("POST", "/api/upload"), ("POST", "/api/upload-stream")],  # the last as an HTTP stream
)
def test_a_body_that_does_not_decompress_is_a_400_problem(base_url: str, method: str, path: str) -> None:
    headers = {"Content-Encoding": "gzip", "X-Request-Id": "e2e-gzip"}
    response = httpx.request(method, f"{base_url}{path}", content=b"\x1f\x8b not gzip at all", headers=headers)
    assert response.status_code == 400  # was a 500 internal-error: the payload error escaped to the catch-all
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "e2e-gzip"
    problem = response.json()
    assert problem["type"] == "https://quantum-platform.dev/problems/bad-request"
    assert problem["status"] == 400
    assert problem["instance"] == path
    assert problem["detail"].startswith("the request body could not be read")


@pytest.mark.parametrize("path", ["/api/upload", "/api/upload-stream"])
def test_a_gzip_body_reaches_the_function_decompressed(base_url: str, path: str) -> None:
    compressed = gzip.compress(b"x" * 1024)
    response = httpx.post(f"{base_url}{path}", content=compressed, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.text == "1024"
