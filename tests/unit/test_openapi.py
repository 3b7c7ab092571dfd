# intent_ref: platform.gateway
"""docs/openapi.json is what the gateway serves (API Management imports it)."""

from __future__ import annotations

from tools.export_openapi import OPENAPI_PATH, render_openapi


def test_committed_openapi_is_current() -> None:
    assert OPENAPI_PATH.read_text(encoding="utf-8") == render_openapi(), "docs/openapi.json is stale: make openapi"


def test_openapi_documents_health_and_ready() -> None:
    import json

    paths = json.loads(render_openapi())["paths"]
    assert {"/api/health", "/api/ready"} <= set(paths)
    assert "503" in paths["/api/ready"]["get"]["responses"]
