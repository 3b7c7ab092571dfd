# intent_ref: platform.hardening
"""Input hygiene, second round: a webhook subscription's description is shown as written (the rule of a tenant's
display name, now in shared.free_text); an allow-list entry matches a URL's host in one canonical form (an entry in
IDNA A-labels never matched, an IPv6 address written otherwise neither) and one holding a zone id is refused; the
bodiless deletes of webhook subscriptions and policies refuse a body as rotate-secret does.

Through the app without I/O, as tests/unit/edge_harness.py sets it up: every refusal here comes before any
transaction, so the database is one that does not exist."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from devhost.identity import SigningKey
from shared.api.routers.webhooks import SubscriptionIn, SubscriptionPatch
from shared.auth.principal import TENANT_ADMIN
from shared.free_text import UNSHOWN_CHARACTER, shown_as_written, unshown_problem
from shared.modules.ssrf import UrlRefused, check_url, host_key
from shared.tenants.models import TenantCreate, TenantUpdate
from shared.tenants.settings import settings_problems
from tests.unit.edge_harness import (  # noqa: F401  # the fixtures client, key, validator
    CONTOSO,
    bearer,
    client,
    key,
    validation_problem,
    validator,
)

URL = "https://hooks.contoso.example/quantum"
NO_BODY = [{"pointer": "", "detail": "this request takes no body: send it without one"}]
UNSHOWN = ["\x1b[2J", "a\x00b", "\x7f", "\x85", "evil\u202etxt.exe", "\u2066x\u2069", "line\nbreak", "tab\there"]


@pytest.fixture()
def admin(key: SigningKey) -> dict[str, str]:
    return bearer(key, TENANT_ADMIN)


# ---- free text is shown as written ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", UNSHOWN)
def test_a_subscription_description_that_would_act_where_shown_is_refused(
    client: TestClient, admin: dict[str, str], text: str
) -> None:
    created = client.post(
        "/api/v1/webhooks", json={"url": URL, "event_types": ["*"], "description": text}, headers=admin
    )
    changed = client.patch(f"/api/v1/webhooks/{uuid.uuid4()}", json={"description": text}, headers=admin)

    for answer in (created, changed):
        problem = validation_problem(answer)
        assert [error["pointer"] for error in problem["errors"]] == ["/description"], problem
        detail = problem["errors"][0]["detail"]
        assert "U+" in detail and text not in detail, detail  # named by code point, never echoed


def test_a_subscription_description_for_people_passes() -> None:
    text = "Builds of the Zürich team \u2014 \u05e9\u05dc\u05d5\u05dd, \u0645\u0631\u062d\u0628\u0627 \U0001f680"
    assert SubscriptionIn.model_validate({"url": URL, "event_types": ["*"], "description": text}).description == text
    assert SubscriptionPatch.model_validate({"description": text}).description == text
    with pytest.raises(ValidationError) as caught:
        SubscriptionPatch.model_validate({"description": "x" * 501})
    assert [error["type"] for error in caught.value.errors()] == ["string_too_long"]


@pytest.mark.parametrize("text", UNSHOWN)
def test_one_rule_for_every_free_text_field(text: str) -> None:
    problem = unshown_problem(text)
    assert problem is not None and text not in problem
    with pytest.raises(ValueError, match="not accepted"):
        shown_as_written(text)
    for model, field in ((TenantUpdate, "display_name"), (SubscriptionPatch, "description")):
        with pytest.raises(ValidationError) as caught:
            model.model_validate({field: text})
        assert [error["type"] for error in caught.value.errors()] == [UNSHOWN_CHARACTER]
    with pytest.raises(ValidationError):
        TenantCreate.model_validate({"name": "contoso", "display_name": text, "entra_tenant_id": str(CONTOSO)})


def test_the_document_states_the_rule(client: TestClient) -> None:
    schemas = client.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    for schema, field in (("SubscriptionIn", "description"), ("SubscriptionPatch", "description")):
        described = str(schemas[schema]["properties"][field])
        assert "no control characters" in described, (schema, described)


# ---- allow-list entries and URL hosts in one form ------------------------------------------------------------------


def _private(host: str, port: int) -> list[str]:
    return ["10.0.0.5"]


@pytest.mark.parametrize(
    ("url", "entry"),
    [
        ("https://bücher.example/", "xn--bcher-kva.example"),
        ("https://xn--bcher-kva.example/", "xn--bcher-kva.example"),
        ("https://XN--BCHER-KVA.example./", "Xn--Bcher-Kva.Example."),
        ("https://xn--bcher-kva.example/", "bücher.example"),
        ("https://bücher.example/", "BÜCHER.example"),
        ("https://faß.example/", "xn--fa-hia.example"),
    ],
)
def test_an_entry_matches_its_host_in_either_idna_form(url: str, entry: str) -> None:
    # A private address opens only to an allow-listed host: reaching it proves the entry matched.
    assert check_url(url, [entry], _private, allow_private=True).addresses == ("10.0.0.5",)
    assert settings_problems({"allowed_hosts": [entry]}, allow_private=True) == []


def test_an_ipv6_entry_matches_the_address_however_it_is_written() -> None:
    link_local = lambda host, port: ["fe80::1"]  # noqa: E731
    assert check_url("http://[FE80::0001]/", ["fe80::1"], link_local, allow_private=True).addresses == ("fe80::1",)
    assert check_url("http://[fe80::1]/", ["FE80:0:0::1"], link_local, allow_private=True).addresses == ("fe80::1",)


def test_an_unlisted_name_still_reaches_no_private_address() -> None:
    with pytest.raises(UrlRefused, match="private"):
        check_url("https://bücher.example/", ["xn--bucher-kva.example", "other.example"], _private, allow_private=True)


@pytest.mark.parametrize("url", ["http://[fe80::1%25eth0]/", "http://[fe80::1%eth0]:8080/x"])
def test_a_url_with_a_zone_id_is_refused(url: str) -> None:
    public = lambda host, port: ["93.184.216.34"]  # noqa: E731
    with pytest.raises(UrlRefused, match="zone id") as caught:
        check_url(url, ["fe80::1%eth0", "fe80::1%25eth0", "fe80::1"], public, allow_private=True)
    assert caught.value.retryable is False


@pytest.mark.parametrize("entry", ["fe80::1%eth0", "fe80::1%25eth0", "FE80::1%1"])
def test_an_entry_with_a_zone_id_is_refused(entry: str) -> None:
    problems = settings_problems({"allowed_hosts": [entry]}, allow_private=True)
    assert [pointer for pointer, _ in problems] == ["/settings/allowed_hosts/0"], problems
    assert "zone id" in problems[0][1]
    assert host_key(entry) is None


# ---- bodiless deletes refuse a body --------------------------------------------------------------------------------

DELETES = ["/api/v1/webhooks/{id}", "/api/v1/policies/{id}"]


@pytest.mark.parametrize("path", DELETES)
@pytest.mark.parametrize("body", [b'{"if_match": "*"}', b"{}", b"[]", b"null", b"x"])
def test_a_delete_refuses_a_body(client: TestClient, admin: dict[str, str], path: str, body: bytes) -> None:
    headers = admin | {"Content-Type": "application/json"}
    answer = client.request("DELETE", path.format(id=uuid.uuid4()), content=body, headers=headers)

    assert validation_problem(answer)["errors"] == NO_BODY


@pytest.mark.parametrize("path", DELETES)
def test_a_delete_without_a_body_passes_the_check(client: TestClient, admin: dict[str, str], path: str) -> None:
    # On to its transaction, which this test's database cannot give: whatever the answer, not the body's refusal.
    answer = client.delete(path.format(id=uuid.uuid4()), headers=admin)
    assert answer.status_code != 422, answer.text
    assert "takes no body" not in answer.text


@pytest.mark.parametrize("path", DELETES)
def test_a_delete_refuses_a_body_only_after_the_permission_check(
    client: TestClient, key: SigningKey, path: str
) -> None:
    headers = bearer(key, "Intent.Reader") | {"Content-Type": "application/json"}
    answer = client.request("DELETE", path.format(id=uuid.uuid4()), content=b"{}", headers=headers)
    assert answer.status_code in (403, 503), answer.text
    assert "takes no body" not in answer.text


@pytest.mark.parametrize("path", [*DELETES, "/api/v1/webhooks/{id}/rotate-secret"])
def test_the_document_describes_the_refusal(client: TestClient, path: str) -> None:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    methods = paths[path.replace("{id}", "{subscription_id}" if "webhooks" in path else "{policy_id}")]
    operation = methods["post" if path.endswith("rotate-secret") else "delete"]
    assert "requestBody" not in operation
    assert "takes no body" in operation["description"]
    assert "takes none" in operation["responses"]["422"]["description"]
