# intent_ref: platform.hardening
"""Input refused at the edge, second round, each refusal a 422 problem that changes nothing: the bodiless archive and
plan of an intent or blueprint, cancel of an execution and export of a tenant refuse a body (they ignored one); a
webhook subscription naming `*` beside a named event type is refused (it was stored as sent); an `allowed_hosts`
entry holding an `xn--` label that is no IDNA A-label is refused (it was stored, and matched no URL's host), and
so is a URL whose host holds one in any label (only a first label was checked: `www.xn--zz.example` was called).

Through the real app on the session's Postgres and Azurite, so that "changes nothing" is read where it would show."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.api.durable import get_durable_client
from shared.modules.ssrf import UrlRefused, check_url
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_races import NotStarted
from tests.integration.test_offboarding import _artifacts, exported_by_job
from tests.integration.test_webhooks import Receiver, local, tenant  # noqa: F401  # local: the fixture

pytestmark = pytest.mark.integration

ROLES = ["Tenant.Admin", "Intent.Reader", "Intent.Author", "Intent.Executor", "Intent.Deployer"]
NO_BODY = [{"pointer": "", "detail": "this request takes no body: send it without one"}]
BODIES = [b'{"if_match": "*"}', b'{"reason": "not today"}', b"{}", b"[]", b"null"]
WAIT = {"target": "staging", "steps": [{"action": "wait", "seconds": 1}]}


def _refused(answer: Any) -> dict[str, Any]:
    """The body of a 422 validation problem."""
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = answer.json()
    assert problem["type"].endswith("/validation-error"), problem
    return problem


def _with_body(api: ApiHarness, method: str, url: str, headers: dict[str, str], body: bytes) -> Any:
    return api.client.request(method, url, content=body, headers=headers | {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def author(api: ApiHarness) -> tuple[str, dict[str, str]]:
    """A tenant allowed the `wait` module, and the headers of a caller holding every tenant role."""
    name = f"edge2-{uuid.uuid4().hex[:6]}"
    api.provision(name, allowed_modules=["wait"], quotas={"requests_per_minute": 100000, "burst": 10000})
    return name, api.headers(name, ROLES)


def _created(api: ApiHarness, headers: dict[str, str], kind: str) -> tuple[str, str]:
    """A new intent or blueprint: its URL and ETag."""
    body = {"name": f"{kind[:-1]}-{uuid.uuid4().hex[:8]}", "definition": WAIT}
    created = api.client.post(f"/api/v1/{kind}", json=body, headers=headers)
    assert created.status_code == 201, created.text
    return created.headers["location"], created.headers["etag"]


# ---- the archive and plan of a stored item take no body ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["intents", "blueprints"])
@pytest.mark.parametrize("body", BODIES)
def test_an_archive_with_a_body_is_refused_and_archives_nothing(
    api: ApiHarness, author: tuple[str, dict[str, str]], kind: str, body: bytes
) -> None:
    _, headers = author
    url, etag = _created(api, headers, kind)

    refused = _with_body(api, "DELETE", url, headers, body)

    assert _refused(refused)["errors"] == NO_BODY
    read = api.client.get(url, headers=headers)
    assert read.json()["status"] == "active" and read.headers["etag"] == etag
    archived = api.client.delete(url, headers=headers)  # the same request without the body is taken
    assert archived.status_code == 200 and archived.json()["status"] == "archived", archived.text


@pytest.mark.parametrize("kind", ["intents", "blueprints"])
def test_a_plan_with_a_body_is_refused_and_decides_nothing(
    api: ApiHarness, author: tuple[str, dict[str, str]], kind: str
) -> None:
    name, headers = author
    url, _ = _created(api, headers, kind)
    before = len(api.audit_rows(name))

    refused = _with_body(api, "POST", f"{url}/plan", headers, b'{"version": 1}')

    assert _refused(refused)["errors"] == NO_BODY
    assert len(api.audit_rows(name)) == before  # no decision on the item was taken, so none was recorded
    planned = api.client.post(f"{url}/plan", headers=headers)
    assert planned.status_code == 200, planned.text


# ---- a cancel takes no body ----------------------------------------------------------------------------------------


@pytest.fixture
def pending(api: ApiHarness, author: tuple[str, dict[str, str]]) -> Iterator[str]:
    """A pending execution's URL, started against a durable client that runs nothing."""
    _, headers = author
    intent, _ = _created(api, headers, "intents")
    api.client.app.dependency_overrides[get_durable_client] = NotStarted  # type: ignore[attr-defined]
    try:
        started = api.client.post(f"{intent}/execute", json={}, headers=headers)
        assert started.status_code == 202, started.text
        yield started.headers["location"]
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client, None)  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", BODIES)
def test_a_cancel_with_a_body_is_refused_and_cancels_nothing(
    api: ApiHarness, author: tuple[str, dict[str, str]], pending: str, body: bytes
) -> None:
    _, headers = author
    before = api.client.get(f"{pending}/events", headers=headers).json()["items"]

    refused = _with_body(api, "POST", f"{pending}/cancel", headers, body)

    assert _refused(refused)["errors"] == NO_BODY
    assert api.client.get(pending, headers=headers).json()["status"] == "pending"
    assert api.client.get(f"{pending}/events", headers=headers).json()["items"] == before
    cancelled = api.client.post(f"{pending}/cancel", headers=headers)  # without the body it is taken
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled", cancelled.text


# ---- a tenant's export takes no body -------------------------------------------------------------------------------


def test_an_export_with_a_body_is_refused_and_writes_nothing(api: ApiHarness, azurite: Any) -> None:
    operator = f"edge2-op-{uuid.uuid4().hex[:6]}"
    api.provision(operator)
    admin = api.headers(operator, ["Platform.Admin"])
    leaving = api.provision(f"edge2-export-{uuid.uuid4().hex[:6]}")
    url = f"/api/v1/tenants/{leaving.id}/export"
    blobs = _artifacts(azurite)
    before = len(api.audit_rows(operator))

    for body in [b'{"include": ["audit_events"]}', b"{}", b"[]", b"null"]:
        assert _refused(_with_body(api, "POST", url, admin, body))["errors"] == NO_BODY

    assert list(blobs.list_blobs(name_starts_with=f"{leaving.id}/")) == []
    assert len(api.audit_rows(operator)) == before
    answer = exported_by_job(api, leaving.id, admin)  # without the body it is taken, then run by the timer
    # a tenant with no blobs: its export folder holds the archive and its manifest
    names = sorted(blob.name for blob in blobs.list_blobs(name_starts_with=f"{leaving.id}/"))
    assert names == sorted([answer["blob_name"], answer["manifest"]])


# ---- `*` stands alone among a subscription's event types -----------------------------------------------------------

BESIDE = [["*", "step.failed"], ["step.failed", "*"], ["execution.completed", "*", "execution.failed"]]


@pytest.mark.parametrize("event_types", BESIDE)
def test_a_subscription_with_star_beside_a_type_is_refused_and_nothing_is_subscribed(
    api: ApiHarness, local: None, event_types: list[str]
) -> None:
    _, headers = tenant(api, f"edge2-hooks-{uuid.uuid4().hex[:6]}")
    before = api.table_snapshot("webhook_subscriptions")

    refused = api.client.post(
        "/api/v1/webhooks", json={"url": Receiver().url, "event_types": event_types}, headers=headers
    )

    errors = _refused(refused)["errors"]
    assert [error["pointer"] for error in errors] == ["/event_types"], errors
    star, named = event_types.index("*"), next(t for t in event_types if t != "*")
    assert f"'*' (entry {star})" in errors[0]["detail"] and f"'{named}'" in errors[0]["detail"], errors
    assert api.client.get("/api/v1/webhooks", headers=headers).json()["items"] == []
    assert api.table_snapshot("webhook_subscriptions") == before


@pytest.mark.parametrize("event_types", BESIDE)
def test_a_change_to_star_beside_a_type_is_refused_and_changes_nothing(
    api: ApiHarness, local: None, event_types: list[str]
) -> None:
    _, headers = tenant(api, f"edge2-hooks-{uuid.uuid4().hex[:6]}")
    created = api.client.post(
        "/api/v1/webhooks", json={"url": Receiver().url, "event_types": ["step.failed"]}, headers=headers
    )
    assert created.status_code == 201, created.text
    url = f"/api/v1/webhooks/{created.json()['id']}"

    refused = api.client.patch(url, json={"event_types": event_types}, headers=headers)

    assert [error["pointer"] for error in _refused(refused)["errors"]] == ["/event_types"]
    read = api.client.get(url, headers=headers)
    assert read.json()["event_types"] == ["step.failed"] and read.headers["etag"] == created.headers["etag"]
    for alone in (["*"], ["step.failed", "execution.failed"]):  # `*` alone, or named types alone, are taken
        changed = api.client.patch(url, json={"event_types": alone}, headers=headers)
        assert changed.status_code == 200 and changed.json()["event_types"] == alone, changed.text


# ---- an allow-list entry is a name a URL's host can be ------------------------------------------------------------


@pytest.mark.parametrize(
    "entry", ["xn--zz.example", "XN--ZZ.example", "www.xn--zz.example", "xn--a.example", "xn--ls8h.example"]
)
def test_an_allowed_host_that_is_no_idna_a_label_is_refused_and_changes_nothing(
    api: ApiHarness, author: tuple[str, dict[str, str]], entry: str
) -> None:
    _, headers = author
    before = api.table_snapshot("tenants")

    refused = api.client.patch(
        "/api/v1/tenant", json={"settings": {"allowed_hosts": ["api.example.com", entry]}}, headers=headers
    )

    errors = _refused(refused)["errors"]
    assert [error["pointer"] for error in errors] == ["/settings/allowed_hosts/1"], errors
    assert repr(entry) in errors[0]["detail"] and "not a valid IDNA 2008 A-label" in errors[0]["detail"], errors
    assert api.table_snapshot("tenants") == before


@pytest.mark.parametrize("entry", ["xn--bcher-kva.example", "bücher.example", "xn--fa-hia.example", "_dmarc.example"])
def test_an_allowed_host_in_a_labels_that_decode_is_taken(
    api: ApiHarness, author: tuple[str, dict[str, str]], entry: str
) -> None:
    _, headers = author
    changed = api.client.patch("/api/v1/tenant", json={"settings": {"allowed_hosts": [entry]}}, headers=headers)
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"]["allowed_hosts"] == [entry]


MALFORMED_URLS = ["https://www.xn--zz.example/hook", "https://a.xn--ls8h.example/", "https://b.XN--A.example./x"]


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_url_whose_host_holds_a_label_that_is_no_a_label_is_refused(url: str) -> None:
    asked: list[str] = []

    def public(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["93.184.216.34"]

    with pytest.raises(UrlRefused, match="not a valid IDNA 2008 A-label"):
        check_url(url, [], public)
    assert asked == []  # refused for its name, before any lookup


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_subscription_to_such_a_url_is_refused_and_nothing_is_subscribed(
    api: ApiHarness, local: None, url: str
) -> None:
    _, headers = tenant(api, f"edge2-hooks-{uuid.uuid4().hex[:6]}")
    before = api.table_snapshot("webhook_subscriptions")

    refused = api.client.post("/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=headers)

    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/webhook-url-refused") and "IDNA 2008 A-label" in refused.json()["detail"]
    assert api.table_snapshot("webhook_subscriptions") == before


# ---- the document says so ------------------------------------------------------------------------------------------

NO_BODY_ROUTES = [
    ("delete", "/api/v1/intents/{item_id}"),
    ("delete", "/api/v1/blueprints/{item_id}"),
    ("post", "/api/v1/intents/{item_id}/plan"),
    ("post", "/api/v1/blueprints/{item_id}/plan"),
    ("post", "/api/v1/executions/{execution_id}/cancel"),
    ("post", "/api/v1/tenants/{tenant_id}/export"),
]


@pytest.mark.parametrize(("method", "path"), NO_BODY_ROUTES)
def test_the_document_describes_the_refusal(api: ApiHarness, method: str, path: str) -> None:
    operation = api.client.app.openapi()["paths"][path][method]  # type: ignore[attr-defined]
    assert "requestBody" not in operation
    assert "takes no body" in operation["description"]
    answer = operation["responses"]["422"]
    assert "takes none" in answer["description"]
    examples = answer["content"]["application/problem+json"]
    documented = [examples["example"]] if "example" in examples else [e["value"] for e in examples["examples"].values()]
    assert any(example.get("errors") == NO_BODY for example in documented), answer


def test_the_document_states_that_star_stands_alone(api: ApiHarness) -> None:
    schemas = api.client.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    for schema in ("SubscriptionIn", "SubscriptionPatch"):
        assert "`*` beside a named type" in str(schemas[schema]["properties"]["event_types"]), schema
