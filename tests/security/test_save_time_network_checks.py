# intent_ref: platform.hardening
"""Outside local development a step URL naming a private, loopback or metadata host is refused when it is saved."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.api.durable import get_durable_client
from shared.config import get_settings
from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author"]
INTENTS, BLUEPRINTS = "/api/v1/intents", "/api/v1/blueprints"
MODULES = ["http", "wait", "verify-deployment"]

# Each URL a step could never call with private networks closed, and why.
REFUSED_URLS = [
    "http://169.254.169.254/metadata/identity/oauth2/token",  # cloud metadata
    "http://[fd00:ec2::254]/latest/meta-data/",  # cloud metadata over IPv6
    "http://127.0.0.1:8080/admin",  # loopback
    "http://2130706433/",  # loopback in a legacy integer form
    "http://0x7f.1/",  # loopback in a legacy hex form
    "http://[::ffff:10.0.0.5]/",  # a private IPv4 address inside IPv6
    "https://10.1.2.3/internal",  # private
    "https://192.168.0.10/",  # private
    "http://100.100.100.200/",  # cloud metadata (shared address space)
    "http://user@0.0.0.0/",  # unspecified, behind user info
    "http://localhost:7071/api",  # a private-only name
    "https://metadata.google.internal/computeMetadata/v1/",  # a private-only name
    "http://printer.local/",  # a private-only name
    "http://127.0.0.1/${inputs.path}",  # the host is fixed before the reference starts
]
# What save time cannot judge, or need not refuse: left to the run-time check of the resolved address.
ACCEPTED_URLS = [
    "https://example.com/health",
    "https://93.184.215.14/",
    "${inputs.url}",
    "https://${inputs.host}/health",
    "http://10.0.0.1${inputs.suffix}/",  # a reference inside the authority could still change the host
    "http://127.0.0.1.nip.io/",  # a public name: its resolution decides at run time
]


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> str:
    api.provision("save-time-urls", allowed_modules=MODULES)
    return "save-time-urls"


@pytest.fixture()
def private_networks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """QP_ALLOW_PRIVATE_NETWORK_HOSTS for the running app: off (the Azure value) unless a test turns it on."""

    def set_to(value: bool) -> None:
        monkeypatch.setenv("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "true" if value else "false")
        get_settings.cache_clear()

    set_to(False)
    yield set_to
    get_settings.cache_clear()


def _steps(url: str) -> list[dict[str, Any]]:
    """The URL in every outbound place a definition can name one: beside the action, in `params`, in a
    compensation, in both wait-healthy actions."""
    return [
        {"id": "pause", "action": "wait", "seconds": 1},
        {"id": "call", "action": "http.request", "url": url},
        {"id": "wait", "action": "http.wait_healthy", "params": {"url": url}},
        {"id": "verify", "action": "verify-deployment", "url": url, "timeout": 60},
        {
            "id": "undoable",
            "action": "wait",
            "seconds": 1,
            "compensate": {"action": "http.request", "method": "POST", "url": url},
        },
    ]


POINTERS = [
    "/definition/steps/1/url",
    "/definition/steps/2/params/url",
    "/definition/steps/3/url",
    "/definition/steps/4/compensate/url",
]


def _body(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "definition": {
            "inputs": {
                "type": "object",
                "properties": {
                    "url": {"type": "string"},
                    "host": {"type": "string"},
                    "path": {"type": "string"},
                    "suffix": {"type": "string"},
                },
            },
            "steps": _steps(url),
        },
    }


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_a_literal_non_public_host_is_refused_at_every_url_of_every_kind(
    api: ApiHarness, tenant: str, private_networks: Callable[[bool], None], url: str
) -> None:
    headers = api.headers(tenant, AUTHOR)
    before = api.table_snapshot("intents")
    for path in (INTENTS, f"{INTENTS}/validate", BLUEPRINTS):
        body = _problem(api.client.post(path, headers=headers, json=_body("refused", url)), 422)
        assert [error["pointer"] for error in body["errors"]] == POINTERS, (path, body)
        assert all("public addresses only" in error["detail"] for error in body["errors"])
    assert api.table_snapshot("intents") == before


@pytest.mark.parametrize("url", ACCEPTED_URLS)
def test_public_hosts_and_references_are_left_to_run_time(
    api: ApiHarness, tenant: str, private_networks: Callable[[bool], None], url: str
) -> None:
    response = api.client.post(f"{INTENTS}/validate", headers=api.headers(tenant, AUTHOR), json=_body("open", url))
    assert response.status_code == 200, response.text


def test_an_update_is_refused_like_a_create(
    api: ApiHarness, tenant: str, private_networks: Callable[[bool], None]
) -> None:
    headers = api.headers(tenant, AUTHOR)
    created = api.client.post(INTENTS, headers=headers, json=_body("updated", "https://example.com/"))
    assert created.status_code == 201, created.text
    update = api.client.put(
        f"{INTENTS}/{created.json()['id']}",
        json=_body("updated", "http://169.254.169.254/"),
        headers={**headers, "If-Match": created.headers["etag"]},
    )
    body = _problem(update, 422)
    assert [error["pointer"] for error in body["errors"]] == POINTERS


def test_with_private_networks_open_nothing_changes(
    api: ApiHarness, tenant: str, private_networks: Callable[[bool], None]
) -> None:
    private_networks(True)
    headers = api.headers(tenant, AUTHOR)
    for index, url in enumerate(REFUSED_URLS[2:6]):
        created = api.client.post(INTENTS, headers=headers, json=_body(f"local-{index}", url))
        assert created.status_code == 201, created.text
    # The setting is read at each save: closing it again refuses the same definition.
    private_networks(False)
    _problem(api.client.post(INTENTS, headers=headers, json=_body("local-again", REFUSED_URLS[2])), 422)


def test_a_declaration_whose_blueprint_builds_a_url_from_its_inputs_is_judged_with_its_values(
    api: ApiHarness, tenant: str, private_networks: Callable[[bool], None]
) -> None:
    # The blueprint's `${inputs.host}` is left to run time; a declaration's value is known when it is saved.
    headers = api.headers(tenant, AUTHOR)
    blueprint = {
        "name": "probe-service",
        "definition": {
            "inputs": {"type": "object", "properties": {"host": {"type": "string"}, "path": {"type": "string"}}},
            "steps": [{"id": "call", "action": "http.request", "url": "https://${inputs.host}/${inputs.path}"}],
        },
    }
    assert api.client.post(BLUEPRINTS, headers=headers, json=blueprint).status_code == 201

    def declaration(name: str, host: str) -> dict[str, Any]:
        return {"name": name, "definition": {"blueprint": "probe-service", "host": host, "path": "status"}}

    before = api.table_snapshot("intents")
    for path in (INTENTS, f"{INTENTS}/validate"):
        body = _problem(
            api.client.post(path, headers=headers, json=declaration("probe-metadata", "169.254.169.254")), 422
        )
        assert [(error["pointer"], error["code"]) for error in body["errors"]] == [
            ("/definition/host", "url_not_public")
        ]
        assert "blueprint step 'call'" in body["errors"][0]["detail"]
    assert api.table_snapshot("intents") == before
    created = api.client.post(INTENTS, headers=headers, json=declaration("probe-public", "status.example.com"))
    assert created.status_code == 201, created.text
    private_networks(True)
    created = api.client.post(INTENTS, headers=headers, json=declaration("probe-local", "10.0.0.9"))
    assert created.status_code == 201, created.text
    # Saved while private networks were open: once they are closed, its start is refused before anything starts.
    private_networks(False)
    starts: list[str] = []

    class Recorder:
        async def start_new(self, _name: str, instance_id: str, _input: Any) -> str:
            starts.append(instance_id)
            return instance_id

    api.client.app.dependency_overrides[get_durable_client] = Recorder  # type: ignore[attr-defined]
    try:
        executor = api.headers(tenant, ["Intent.Executor"])
        started = api.client.post(f"{INTENTS}/{created.json()['id']}/execute", headers=executor)
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]
    body = _problem(started, 409)
    assert body["type"].endswith("/definition-invalid") and "public addresses only" in body["detail"]
    assert starts == []
