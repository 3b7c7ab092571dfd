# intent_ref: platform.gateway
"""A method a path does not take is a 405 problem whose Allow names every method the path takes (RFC 9110 §15.5.6),
not only those of the first route whose path matched."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.api.app import create_app
from shared.config import get_settings

ITEM = "0b7f3c1e-intent"
METHODS = ("DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # Routing refuses the method before any dependency runs: the app needs settings, never a database.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QP_DATABASE_URL", "host=/nonexistent dbname=none")
        patch.setenv("QP_DATABASE_CONTROL_URL", "host=/nonexistent dbname=none")
        patch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
        get_settings.cache_clear()
        try:
            yield TestClient(create_app(), raise_server_exceptions=False)
        finally:
            get_settings.cache_clear()


def _assert_refused(client: TestClient, method: str, path: str, allow: str) -> None:
    response = client.request(method, path, headers={"X-Request-Id": "allow-check"})
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "allow-check"
    if method != "HEAD":  # a HEAD answer has no body
        assert response.json() == {
            "type": "https://quantum-platform.dev/problems/method-not-allowed",
            "title": "Method not allowed",
            "status": 405,
            "detail": "Method Not Allowed",
            "instance": path,
        }


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/api/v1/intents", "GET, POST"),  # a list route and a create route on one path
        ("POST", f"/api/v1/intents/{ITEM}", "DELETE, GET, PUT"),
        ("HEAD", "/api/v1/intents", "GET, POST"),  # the app answers no HEAD, so Allow does not offer it
        ("PATCH", "/api/v1/intents/validate", "DELETE, GET, POST, PUT"),  # `validate` is an {item_id} too
        ("DELETE", "/api/v1/tenant", "GET, PATCH"),
        ("PUT", "/api/health", "GET"),
    ],
)
def test_allow_names_every_method_the_path_takes(client: TestClient, method: str, path: str, allow: str) -> None:
    _assert_refused(client, method, path, allow)


def test_allow_agrees_with_the_documented_operations_on_every_path(client: TestClient) -> None:
    # The oracle is the app's OpenAPI document (the gateway imports it): a path's methods are those of every
    # documented path template the path fits. Each path is asked with a method none of them takes.
    app: Any = client.app
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    templates = {
        re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"): ops for template, ops in paths.items()
    }
    checked = 0
    for template in paths:
        path = re.sub(r"\{[^}]+\}", "1", template)
        documented = {
            m.upper() for regex, ops in templates.items() if regex.match(path) for m in ops if m != "parameters"
        }
        method = next(m for m in METHODS if m not in documented)
        _assert_refused(client, method, path, ", ".join(sorted(documented)))
        checked += 1
    assert checked == len(paths) > 40
