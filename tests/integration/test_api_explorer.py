# intent_ref: platform.gateway
"""The API explorer works offline and signed in: every asset of /api/docs comes from the app itself, and the
OpenAPI document says how to authenticate (Entra OAuth2, or a bearer token), route by route."""

from __future__ import annotations

import re

import pytest

from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration


def test_the_explorer_loads_only_the_apps_own_assets(api: ApiHarness) -> None:
    page = api.client.get("/api/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    references = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
    assert references, page.text
    for reference in references:
        assert reference.startswith("/api/"), f"{reference} is not served by the app"
    assets = [r for r in references if r.startswith("/api/docs/assets/")]
    assert {a.rsplit("/", 1)[1] for a in assets} == {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}
    for asset in assets:
        answer = api.client.get(asset)
        assert answer.status_code == 200, asset
        assert len(answer.content) > 1000 and "max-age" in answer.headers["cache-control"]
    assert api.client.get("/api/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert api.client.get("/api/docs/assets/..%2F..%2Fopenapi.json").status_code == 404
    missing = api.client.get("/api/docs/assets/secrets.txt")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    # The page points Swagger UI at the app's own document, which it can read.
    assert "/api/openapi.json" in page.text and api.client.get("/api/openapi.json").status_code == 200


def test_the_openapi_document_declares_how_to_authenticate(api: ApiHarness) -> None:
    schema = api.client.get("/api/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["bearer"]["description"],
    }
    code_flow = schemes["entra"]["flows"]["authorizationCode"]
    assert code_flow["authorizationUrl"].startswith("https://login.microsoftonline.com/")
    assert list(code_flow["scopes"]) == ["api://quantum-platform/access_as_user"]
    assert list(schemes["entra"]["flows"]["clientCredentials"]["scopes"]) == ["api://quantum-platform/.default"]
    assert schema["security"] == [{"entra": ["api://quantum-platform/access_as_user"]}, {"bearer": []}]
    paths = schema["paths"]
    assert paths["/api/health"]["get"]["security"] == []
    assert paths["/api/v1/executions/{execution_id}/steps/{step_id}/complete"]["post"]["security"] == []
    assert "security" not in paths["/api/v1/intents"]["post"]  # the document's default: a token
    assert "security" not in paths["/api/v1/work/lease"]["post"]


def test_try_it_out_works_with_a_bearer_token(api: ApiHarness) -> None:
    # What the explorer sends after "Authorize" with a dev token: the header of the bearer scheme.
    api.provision("explorer-tenant")
    headers = api.headers("explorer-tenant", ["Intent.Reader"])
    assert api.client.get("/api/v1/intents", headers=headers).status_code == 200
    assert api.client.get("/api/v1/intents").status_code == 401
