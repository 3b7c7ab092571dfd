# intent_ref: platform.identity
"""A header the platform reads as one value (Authorization, Last-Event-ID) sent more than once is 400
problem+json `repeated-header`, as a repeated Idempotency-Key is: taking the first, the app could disagree about the
caller with a proxy in front that reads another of them. The same on tenant routes, the control plane and the
task-completion routes, whose credential is in the body. If-Match is a list: its lines are joined, not refused.

Through the app, without I/O: tokens are checked by a stand-in validator, tenants come from a stand-in directory
cache, and the rate token is always granted."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.api import readiness
from shared.api import security as api_security
from shared.api.accepted_input import AcceptedInputMiddleware
from shared.api.app import create_app
from shared.auth.tokens import InvalidTokenError, VerifiedToken
from shared.config import get_settings
from shared.db.pool import close_pool
from shared.etags import if_match_tags
from shared.ratelimit import RateDecision
from shared.tenants.repository import tenant_directory
from tests.unit.edge_harness import a_tenant

ENTRA = {"contoso": uuid.uuid4(), "fabrikam": uuid.uuid4()}
TENANTS = {entra: a_tenant(entra, name, name.title()) for name, entra in ENTRA.items()}
EXECUTION = uuid.uuid4()


class StandInValidator:
    """Accepts the tokens named after the tenants above (each its tenant's Intent.Reader and Platform.Admin)."""

    def validate(self, token: str, *, at: float | None = None, offline: bool = False) -> VerifiedToken:
        if token not in ENTRA:
            raise InvalidTokenError("not a token")
        return VerifiedToken(
            entra_tenant_id=ENTRA[token],
            object_id=uuid.UUID(int=1),
            roles=frozenset({"Intent.Reader", "Platform.Admin"}),
            scopes=frozenset(),
            app_only=False,
            display_name=token,
            claims=MappingProxyType({}),
        )


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("QP_DATABASE_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    get_settings.cache_clear()
    monkeypatch.setattr(tenant_directory, "cached", lambda entra: (True, TENANTS.get(entra)))
    monkeypatch.setattr(api_security, "take_tenant_token", lambda tenant_id, limit: RateDecision(True, 0.0))
    app = create_app()
    app.dependency_overrides[api_security.token_validator] = StandInValidator
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    close_pool()
    readiness._probe_client.cache_clear()
    get_settings.cache_clear()


def _bearer(*tokens: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}") for token in tokens]


def _assert_repeated(answer: Any, header: str, count: int = 2) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    detail = f"send one {header} header, not {count}"
    assert problem["type"].endswith("/repeated-header"), problem
    assert (problem["header"], problem["detail"]) == (header, detail)
    assert problem["errors"] == [{"pointer": f"/header/{header.lower()}", "detail": detail}]


def test_one_authorization_header_names_its_caller(client: TestClient) -> None:
    # The stand-ins at work: each token alone is its own tenant's caller.
    for name in ENTRA:
        answer = client.get("/api/v1/me", headers=_bearer(name))
        assert answer.status_code == 200, answer.text
        assert answer.json()["tenant_name"] == name


@pytest.mark.parametrize(
    "tokens", [("contoso", "fabrikam"), ("fabrikam", "contoso"), ("garbage", "contoso"), ("contoso", "contoso")]
)
def test_a_repeated_authorization_header_is_400_not_the_first_tokens_caller(
    client: TestClient, tokens: tuple[str, ...]
) -> None:
    # Answered as the first token's caller before (200 as contoso, or as fabrikam reversed; 401 for garbage first).
    answer = client.get("/api/v1/me", headers=_bearer(*tokens))
    _assert_repeated(answer, "Authorization")
    assert answer.headers["www-authenticate"] == 'Bearer error="invalid_request"'


def test_a_repeated_authorization_header_is_400_on_the_control_plane(client: TestClient) -> None:
    answer = client.get("/api/v1/tenants", headers=_bearer("contoso", "fabrikam", "contoso"))
    _assert_repeated(answer, "Authorization", 3)


@pytest.mark.parametrize("suffix", ["/complete", "/fail", "/compensation/complete", "/compensation/fail"])
def test_a_repeated_authorization_header_is_400_on_the_task_completion_routes(client: TestClient, suffix: str) -> None:
    # Their credential is the body's task token: the header was ignored, and a bad token answered 401 after it.
    url = f"/api/v1/executions/{EXECUTION}/steps/build{suffix}"
    body = {"task_token": "qpt1.not.a-token", "output": {}} if suffix.endswith("complete") else {}
    if suffix.endswith("fail"):
        body = {"task_token": "qpt1.not.a-token", "error": "x"}
    answer = client.post(url, json=body, headers=_bearer("contoso", "fabrikam"))
    _assert_repeated(answer, "Authorization")
    # One Authorization header is no concern of theirs: the task token is checked (and refused) as before.
    alone = client.post(url, json=body, headers=_bearer("contoso"))
    assert alone.status_code == 401 and alone.json()["type"].endswith("/invalid-task-token"), alone.text


def test_a_repeated_last_event_id_is_400(client: TestClient) -> None:
    # The stream resumed after the first of them; a proxy reading the last would disagree about what was missed.
    headers = [*_bearer("contoso"), ("Accept", "text/event-stream"), ("Last-Event-ID", "3"), ("Last-Event-ID", "9")]
    answer = client.get(f"/api/v1/executions/{EXECUTION}/events", headers=headers)
    _assert_repeated(answer, "Last-Event-ID")


def test_if_match_lines_are_one_list_the_route_reads_whole() -> None:
    # If-Match is a list (RFC 9110): two lines are the two tags of one list, not a repeat to refuse; the routes read
    # one value, so the edge joins them (taking the first line alone ignored the second tag).
    seen: list[list[tuple[bytes, bytes]]] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    edge = TestClient(AcceptedInputMiddleware(route))
    headers = [("If-Match", '"a.v1"'), ("X-Other", "1"), ("If-Match", '"a.v2", "a.v3"')]
    assert edge.get("/api/v1/anything", headers=headers).status_code == 204
    assert [value for key, value in seen[0] if key == b"if-match"] == [b'"a.v1", "a.v2", "a.v3"']
    assert (b"x-other", b"1") in seen[0]
    assert if_match_tags("*, *") is None  # `*` on two lines is still any current version
    assert if_match_tags('"stale", *') == {'"stale"'}  # mixed: the tags count, so a stale one still fails
    assert if_match_tags(dict((k.decode(), v.decode()) for k, v in seen[0])["if-match"]) == {
        '"a.v1"',
        '"a.v2"',
        '"a.v3"',
    }


def test_a_caller_without_a_valid_token_hears_401_before_a_repeated_header_is_judged(client: TestClient) -> None:
    headers = [*_bearer("garbage"), ("Last-Event-ID", "1"), ("Last-Event-ID", "2")]
    answer = client.get(f"/api/v1/executions/{EXECUTION}/events", headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.json()["type"].endswith("/invalid-token")


def test_every_operation_that_signs_its_caller_in_documents_the_repeated_header_400() -> None:
    document = json.loads(Path("docs/openapi.json").read_text())
    missing = [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "401" in operation["responses"]
        and "/repeated-header" not in json.dumps(operation["responses"].get("400", {}).get("content", {}))
    ]
    assert not missing, missing
