# intent_ref: platform.devhost
"""The running devhost answers a request its HTTP parser refuses with problem+json, never a text/plain page."""

from __future__ import annotations

import json

import pytest

from devhost.child import PROJECT_ROOT
from tests.e2e.conftest import DevhostFactory
from tests.e2e.test_devhost_http_answers import _exchange

pytestmark = pytest.mark.e2e

APP = PROJECT_ROOT / "tests" / "devhost_http_app"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /api/probe HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET /api/probe HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    ],
    ids=["request-line", "header", "oversize-header", "chunk-size"],
)
def test_a_request_the_parser_refuses_is_a_400_problem(devhost_factory: DevhostFactory, request_bytes: bytes) -> None:
    status, headers, body = _exchange(devhost_factory(app_dir=APP).base_url, request_bytes)
    assert status[1] == b"400"
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert (problem["type"], problem["status"]) == ("https://quantum-platform.dev/problems/bad-request", 400)
