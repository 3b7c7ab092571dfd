# intent_ref: platform.gateway
"""A single-valued query parameter given twice is refused; a repeatable one still takes several values."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from shared.api.app import create_app
from shared.api.permissions import route_permission
from shared.api.query_params import _single_valued
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import INTENTS, READER, create, intent_body, provision

pytestmark = pytest.mark.integration


def test_a_parameter_taken_once_and_given_twice_is_refused(api: ApiHarness) -> None:
    tenant = provision(api, "query-twice")
    create(api, tenant, intent_body("web-a", labels={"team": "web", "tier": "1"}))
    create(api, tenant, intent_body("web-b", labels={"team": "web"}))
    headers = api.headers(tenant, READER)

    for query, name in (
        ("limit=1&limit=100", "limit"),
        ("name_prefix=web-&name_prefix=api-", "name_prefix"),
        ("status=active&limit=5&status=archived", "status"),
    ):
        response = api.client.get(f"{INTENTS}?{query}", headers=headers)
        assert response.status_code == 422, (query, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["type"].endswith("validation-error")
        assert [error["pointer"] for error in body["errors"]] == [f"/query/{name}"], body

    # Parameters that take several values, and parameters the route does not take, are as before.
    response = api.client.get(f"{INTENTS}?label=team:web&label=tier:1&unknown=1&unknown=2", headers=headers)
    assert response.status_code == 200, response.text
    assert [item["name"] for item in response.json()["items"]] == ["web-a"]
    response = api.client.get(f"{INTENTS}?limit=1", headers=headers)
    assert response.status_code == 200 and len(response.json()["items"]) == 1


def test_a_parameter_a_dependency_takes_is_checked_too(api: ApiHarness) -> None:
    tenant = provision(api, "query-dependency")
    headers = api.headers(tenant, READER)
    response = api.client.get("/api/v1/executions?limit=1&limit=2", headers=headers)
    assert response.status_code == 422, response.text
    assert [error["pointer"] for error in response.json()["errors"]] == ["/query/limit"]


def test_a_caller_refused_is_answered_401_or_403_before_any_query_problem(api: ApiHarness) -> None:
    # As the framework's own query validation: an anonymous caller learns nothing of a route's parameters.
    tenant = provision(api, "query-refused-first")
    anonymous = api.client.get(f"{INTENTS}?limit=1&limit=2")
    assert anonymous.status_code == 401, anonymous.text
    roleless = api.client.get(f"{INTENTS}?limit=1&limit=2", headers=api.headers(tenant, ["Module.Worker"]))
    assert roleless.status_code == 403, roleless.text


def test_every_route_taking_a_single_valued_query_parameter_checks_repeats(api: ApiHarness) -> None:  # noqa: ARG001
    # The check runs in the permission dependency, after its decision: a route without one would take the last value.
    app = create_app()
    unchecked = [
        route.path
        for route in app.routes
        if isinstance(route, APIRoute) and _single_valued(route) and route_permission(route) is None
    ]
    assert unchecked == []
