# intent_ref: platform.idempotency
"""Every tenant create route takes an Idempotency-Key: a retry replays the first answer and creates nothing more,
the key with another body is 422, a malformed key is 400 and creates nothing (DESIGN §4)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from shared.config import get_settings
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

ADMIN = ["Tenant.Admin"]
POLICY = 'forbid (principal, action == QP::Action::"tenant.settings.read", resource) when { principal.app_only };'


@dataclass(frozen=True)
class Route:
    path: str
    name_field: str

    def body(self, name: str) -> dict[str, Any]:
        match self.path:
            case "/api/v1/webhooks":
                return {"url": "http://127.0.0.1:9/hook", "event_types": ["intent.created"], "description": name}
            case "/api/v1/modules":
                return {"action": name, "description": "Roll a release.", "params_schema": {"type": "object"}}
            case _:
                return {"name": name, "policy": POLICY}

    def names(self, api: ApiHarness, headers: dict[str, str]) -> list[str]:
        listed = api.client.get(self.path, headers=headers)
        assert listed.status_code == 200, listed.text
        names = [item.get(self.name_field) or "" for item in listed.json()["items"]]
        return [name for name in names if name.startswith(("roll", "twice"))]  # built-in modules are listed too


ROUTES = [
    Route("/api/v1/webhooks", "description"),
    Route("/api/v1/modules", "action"),
    Route("/api/v1/policies", "name"),
]


@pytest.fixture
def loopback_hooks(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Local development's setting, so a subscription may name 127.0.0.1 (the tenant allows it below)."""
    monkeypatch.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "true")
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS")
    get_settings.cache_clear()


def _tenant(api: ApiHarness) -> dict[str, str]:
    name = f"idem-{uuid.uuid4().hex[:8]}"
    api.provision(name, allowed_modules=["wait", "roll"])
    headers = api.headers(name, ADMIN)
    allowed = api.client.patch("/api/v1/tenant", json={"settings": {"allowed_hosts": ["127.0.0.1"]}}, headers=headers)
    assert allowed.status_code == 200, allowed.text
    return headers


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.path.rsplit("/", 1)[-1])
def test_a_retried_create_replays_its_first_answer(api: ApiHarness, loopback_hooks: None, route: Route) -> None:
    headers = _tenant(api)
    keyed = {**headers, "Idempotency-Key": f"create-{uuid.uuid4().hex}"}
    first = api.client.post(route.path, json=route.body("roll"), headers=keyed)
    assert first.status_code == 201, first.text
    again = api.client.post(route.path, json=route.body("roll"), headers=keyed)
    assert again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers.get("location") == first.headers.get("location")
    assert route.names(api, headers) == ["roll"]  # created once

    other = api.client.post(route.path, json=route.body("roll-other"), headers=keyed)
    assert other.status_code == 422 and other.json()["type"].endswith("/idempotency-key"), other.text
    malformed = api.client.post(route.path, json=route.body("roll-bad"), headers={**headers, "Idempotency-Key": " "})
    assert malformed.status_code == 400 and malformed.headers["content-type"] == "application/problem+json"
    assert route.names(api, headers) == ["roll"]  # neither created anything


def test_a_webhook_created_twice_without_a_key_is_two_subscriptions(api: ApiHarness, loopback_hooks: None) -> None:
    """What the key prevents: without it a client's retry subscribes the URL twice (each event delivered twice)."""
    headers = _tenant(api)
    route = ROUTES[0]
    for _ in range(2):
        assert api.client.post(route.path, json=route.body("twice"), headers=headers).status_code == 201
    assert route.names(api, headers) == ["twice", "twice"]


def test_another_principal_of_the_tenant_cannot_replay_an_answer_by_its_key(
    api: ApiHarness, loopback_hooks: None
) -> None:
    # Keys were the tenant's alone: another admin who knew a key got the first caller's stored answer, a webhook's
    # signing secret among them (shown once, to its creator).
    name = f"idem-{uuid.uuid4().hex[:8]}"
    api.provision(name, allowed_modules=["wait"])
    headers = api.headers(name, ADMIN)
    api.client.patch("/api/v1/tenant", json={"settings": {"allowed_hosts": ["127.0.0.1"]}}, headers=headers)
    key = {"Idempotency-Key": f"create-{uuid.uuid4().hex}"}
    route = ROUTES[0]
    first = api.client.post(route.path, json=route.body("roll"), headers={**headers, **key})
    assert first.status_code == 201 and first.json()["secret"], first.text
    someone_else = api.headers(name, ADMIN, oid=str(uuid.uuid4()))
    other = api.client.post(route.path, json=route.body("roll"), headers={**someone_else, **key})
    assert other.status_code == 422 and other.json()["type"].endswith("/idempotency-key"), other.text
    assert first.json()["secret"] not in other.text
    again = api.client.post(route.path, json=route.body("roll"), headers={**headers, **key})
    assert again.status_code == 201 and again.json() == first.json()
    assert route.names(api, headers) == ["roll"]


def test_a_replayed_create_is_the_first_answer_byte_for_byte(api: ApiHarness, loopback_hooks: None) -> None:
    # The kept body was jsonb, which sorts an object's keys by length then bytes: a retry got the same values in
    # another order (`id` before `name`, an intent's steps' fields reordered), so two answers to one request differed.
    name = f"idem-{uuid.uuid4().hex[:8]}"
    api.provision(name, allowed_modules=["wait", "roll"])
    headers = api.headers(name, [*ADMIN, "Intent.Author"])
    allowed = api.client.patch("/api/v1/tenant", json={"settings": {"allowed_hosts": ["127.0.0.1"]}}, headers=headers)
    assert allowed.status_code == 200, allowed.text
    step = {"seconds": 1, "action": "wait", "id": "only"}  # jsonb would answer id, action, seconds
    bodies = [(route.path, route.body("roll")) for route in ROUTES]
    bodies.append(("/api/v1/intents", {"name": "roll", "definition": {"target": "staging", "steps": [step]}}))
    for path, body in bodies:
        keyed = {**headers, "Idempotency-Key": f"create-{uuid.uuid4().hex}"}
        first = api.client.post(path, json=body, headers=keyed)
        assert first.status_code == 201, first.text
        again = api.client.post(path, json=body, headers=keyed)
        assert again.status_code == 201, again.text
        assert again.content == first.content, path
        kept = ("location", "etag")
        assert [again.headers.get(field) for field in kept] == [first.headers.get(field) for field in kept], path
