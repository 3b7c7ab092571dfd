# intent_ref: platform.devhost
"""HTTP triggers through the devhost: real func.HttpRequest / HttpResponse conversion over the wire."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e


@pytest.fixture()
def base_url(devhost_factory: DevhostFactory) -> str:
    return devhost_factory().base_url


def test_request_reaches_the_function_as_sent(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/api/echo/bob/3", params={"x": "1"}, headers={"X-Custom": "hello"}, json={"k": [1, 2]}
    )
    assert response.status_code == 201
    assert response.headers["x-echo"] == "yes"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["method"] == "POST"
    assert body["route"] == {"name": "bob", "count": "3"}
    assert body["query"] == {"x": "1"}
    assert body["header"] == "hello"
    assert body["json"] == {"k": [1, 2]}


def test_route_constraints_and_methods_are_enforced(base_url: str) -> None:
    assert httpx.post(f"{base_url}/api/echo/bob/not-a-number").status_code == 404
    assert httpx.get(f"{base_url}/api/echo/bob/3").status_code == 405
    assert httpx.put(f"{base_url}/api/echo/bob/3", content=b"").status_code == 201


def test_string_return_is_plain_text(base_url: str) -> None:
    response = httpx.get(f"{base_url}/api/plain")
    assert response.status_code == 200
    assert response.text == "plain text"


def test_function_exception_is_500(base_url: str) -> None:
    assert httpx.get(f"{base_url}/api/broken").status_code == 500


def test_async_function_gets_a_context(base_url: str) -> None:
    body = httpx.get(f"{base_url}/api/with-context").json()
    assert body["function_name"] == "with_context"
    assert len(body["invocation_id"]) == 36
