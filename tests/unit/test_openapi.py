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


def test_every_api_operation_documents_its_errors_and_examples() -> None:
    import json

    document = json.loads(render_openapi())
    components = document["components"]["schemas"]
    gaps = []
    for path, operations in document["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            if not operation.get("summary"):
                gaps.append(f"{where}: no summary")
            missing = {"401", "403", "429"} - set(operation.get("responses", {}))
            if missing:
                gaps.append(f"{where}: undocumented {sorted(missing)}")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                schema = body.get("schema", {})
                referenced = components.get(schema.get("$ref", "").rsplit("/", 1)[-1], {})
                if not (
                    body.get("examples") or body.get("example") or schema.get("examples") or referenced.get("examples")
                ):
                    gaps.append(f"{where}: request body without an example")
    assert gaps == []
