# intent_ref: platform.hardening
"""What a hostile body costs before it is refused is bounded: a body of more arrays and objects than the edge takes
is refused before it is parsed, and a body of a hundred thousand unknown members has only the few errors its answer
lists built (the answer still counts all of them), on the request models, in the registry and on the remote workers'
completion routes alike, where a caller without a valid task token hears 401 before any body model is validated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi._compat import ModelField  # what FastAPI validates a body parameter with
from psycopg_pool import ConnectionPool

import shared.api.problems as problems
import shared.registry.validation as validation
from shared.accepted_json import MAX_REFUSALS
from shared.api.accepted_input import MAX_BODY_CONTAINERS, TOO_MANY_CONTAINERS, containers
from shared.api.durable import get_durable_client
from shared.api.problems import MAX_LISTED_ERRORS
from shared.api.routers.task_completion import StepCompletion, StepFailure
from shared.db.session import tenant_transaction
from shared.engine import task_tokens
from shared.registry.catalog import builtin_catalog
from shared.registry.service import DefinitionInvalidError
from tests.integration.api_harness import ApiHarness
from tests.security.test_task_token_no_trace import RemoteAttempt, remote_attempt

pytestmark = pytest.mark.integration

TENANT = "hostile-cost"
ROLES = ["Intent.Author", "Intent.Executor", "Tenant.Admin"]
UNKNOWN = 100_000
DEFINITION = {"target": "staging", "steps": [{"action": "wait", "seconds": 1}]}


class _StartsNothing:
    """The Durable client the execute route takes: an accepted body's orchestration is taken as started."""

    async def start_new(self, *_args: Any, **_kwargs: Any) -> str:
        return "started"


@pytest.fixture(scope="module")
def intent_id(api: ApiHarness) -> Iterator[str]:
    app: Any = api.client.app
    app.dependency_overrides[get_durable_client] = _StartsNothing
    api.provision(TENANT, allowed_modules=["wait"], quotas={"requests_per_minute": 100_000, "burst": 10_000})
    created = api.client.post(
        "/api/v1/intents", headers=api.headers(TENANT, ROLES), json={"name": "cost", "definition": DEFINITION}
    )
    assert created.status_code == 201, created.text
    yield created.json()["id"]
    app.dependency_overrides.pop(get_durable_client, None)


def _send(api: ApiHarness, path: str, body: bytes, roles: list[str] = ROLES) -> httpx.Response:
    headers = {**api.headers(TENANT, roles), "Content-Type": "application/json"}
    return api.client.post(path, headers=headers, content=body)


def _input_of_containers(count: int) -> bytes:
    """An execute body whose input holds `count` arrays and objects in all (the body and its input are two)."""
    return ('{"input":{"a":[' + ",".join(["[]"] * (count - 3)) + "]}}").encode()


def _unknown_members(first: dict[str, Any]) -> bytes:
    members = ",".join(f'"{n}":0' for n in range(UNKNOWN))
    return (json.dumps(first)[:-1] + "," + members + "}").encode()


def test_containers_are_counted_outside_strings_only() -> None:
    assert containers(_input_of_containers(MAX_BODY_CONTAINERS)) == MAX_BODY_CONTAINERS
    text = json.dumps({"a": ["[{" * MAX_BODY_CONTAINERS, {"b": '\\"[{'}]})
    assert containers(text.encode()) == 3


def test_a_body_of_more_containers_than_the_bound_is_refused_and_nothing_is_written(
    api: ApiHarness, intent_id: str
) -> None:
    before = api.table_snapshot("executions"), api.table_snapshot("intent_versions")
    body = _input_of_containers(MAX_BODY_CONTAINERS + 1)
    for path in (f"/api/v1/intents/{intent_id}/execute", "/api/v1/intents", f"/api/v1/intents/{intent_id}/plan"):
        response = _send(api, path, body)
        assert response.status_code == 422, response.text[:500]
        assert response.headers["content-type"] == "application/problem+json"
        document = response.json()
        assert document["type"].endswith("/validation-error")
        assert document["errors"] == [
            {
                "pointer": "",
                "detail": f"the body holds {MAX_BODY_CONTAINERS + 1} arrays and objects; "
                f"at most {MAX_BODY_CONTAINERS} are accepted",
                "code": TOO_MANY_CONTAINERS,
            }
        ]
    assert (api.table_snapshot("executions"), api.table_snapshot("intent_versions")) == before
    # A caller without the route's role hears 403 first, as for every refusal of the body at the edge.
    assert _send(api, f"/api/v1/intents/{intent_id}/execute", body, ["Intent.Reader"]).status_code == 403


def test_a_body_at_the_bound_and_brackets_in_strings_are_accepted(api: ApiHarness, intent_id: str) -> None:
    at_bound = _send(api, f"/api/v1/intents/{intent_id}/execute", _input_of_containers(MAX_BODY_CONTAINERS))
    assert at_bound.status_code == 202, at_bound.text[:500]
    text = json.dumps({"input": {"s": "[{" * MAX_BODY_CONTAINERS}})
    in_strings = _send(api, f"/api/v1/intents/{intent_id}/execute", text.encode())
    assert in_strings.status_code == 202, in_strings.text[:500]


@pytest.fixture
def raised(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Every exception the app answered as a problem, as it was raised."""
    seen: list[BaseException] = []
    answer = problems.error_response

    def spy(exc: BaseException, **kwargs: Any) -> Any:
        seen.append(exc)
        return answer(exc, **kwargs)

    monkeypatch.setattr(problems, "error_response", spy)
    return seen


def test_unknown_members_of_a_request_model_are_counted_not_each_validated(
    api: ApiHarness, intent_id: str, raised: list[BaseException]
) -> None:
    body = _unknown_members({"url": 5, "event_types": ["*"]})
    response = _send(api, "/api/v1/webhooks", body)
    assert response.status_code == 422, response.text[:500]
    document = response.json()
    assert document["detail"] == f"{UNKNOWN + 1} invalid field(s), the first {MAX_REFUSALS} listed"
    expected = ["/url", *(f"/{n}" for n in range(MAX_REFUSALS - 1))]
    assert [error["pointer"] for error in document["errors"]] == expected
    [error] = raised
    assert len(error.errors()) <= 1 + MAX_REFUSALS  # type: ignore[attr-defined]  # not one per unknown member


def test_unknown_members_of_a_definition_are_counted_not_each_built(
    api: ApiHarness, intent_id: str, raised: list[BaseException]
) -> None:
    before = api.table_snapshot("intent_versions")
    response = _send(api, "/api/v1/intents", _unknown_members({"name": "flood", "definition": DEFINITION}))
    assert response.status_code == 422, response.text[:500]
    document = response.json()
    assert document["detail"] == (
        f"The intent has {UNKNOWN} problems; the first {MAX_LISTED_ERRORS} of {UNKNOWN} are listed."
    )
    assert [error["pointer"] for error in document["errors"]] == [f"/{n}" for n in range(MAX_LISTED_ERRORS)]
    assert api.table_snapshot("intent_versions") == before
    [error] = raised
    refused = error.__context__  # the registry's error, answered as a problem
    assert isinstance(refused, DefinitionInvalidError)
    assert len(refused.errors) <= MAX_LISTED_ERRORS and refused.unlisted == UNKNOWN - MAX_LISTED_ERRORS


def test_a_definition_with_many_unknown_members_lists_what_every_member_validated_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Unknown members before, between and after known ones, and problems in the known ones: the first errors and
    # their count are those of the whole body validated by pydantic, as before.
    doc: dict[str, Any] = {f"a{n}": 0 for n in range(30)}
    doc["definition"] = {"target": "staging", "steps": [{"action": "no-such-action"}], "colour": 1}
    doc |= {f"b{n}": 0 for n in range(40)}
    doc["labels"] = {"bad key!": 5}
    doc |= {f"c{n}": 0 for n in range(200)}
    catalog = builtin_catalog()
    cut = validation.validate_definition(doc, catalog=catalog)
    monkeypatch.setattr(validation, "MAX_REPORTED_ERRORS", 10**9)  # every member through pydantic, as before
    whole = validation.validate_definition(doc, catalog=catalog)
    assert whole.unlisted == 0
    assert len(cut.errors) + cut.unlisted == len(whole.errors)
    assert cut.errors[:MAX_LISTED_ERRORS] == whole.errors[:MAX_LISTED_ERRORS]
    assert len(cut.errors) < len(whole.errors)


class _RecordingClient:
    """The Durable client of the completion routes: records the verdicts it would raise."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, str, Any]] = []

    async def raise_event(self, instance_id: str, name: str, data: Any) -> None:
        self.raised.append((instance_id, name, data))


@pytest.fixture(scope="module")
def worker_tenant(api: ApiHarness) -> UUID:
    return api.provision("hostile-worker", quotas={"requests_per_minute": 100_000, "burst": 10_000}).id


@pytest.fixture
def completion(
    api: ApiHarness, app_pool: ConnectionPool[Any], worker_tenant: UUID
) -> Iterator[tuple[RemoteAttempt, _RecordingClient]]:
    """A leased remote attempt with its real task token, and the client its verdict would be raised to."""
    recording = _RecordingClient()
    app: Any = api.client.app
    app.dependency_overrides[get_durable_client] = lambda: recording
    yield remote_attempt(app_pool, worker_tenant), recording
    app.dependency_overrides.pop(get_durable_client, None)


@pytest.fixture
def body_models(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    """The completion body models validated, one entry per validation (path parameters are not counted)."""
    seen: list[type] = []
    validate = ModelField.validate

    def spy(self: ModelField, *args: Any, **kwargs: Any) -> Any:
        if self.field_info.annotation in (StepCompletion, StepFailure):
            seen.append(self.field_info.annotation)
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(ModelField, "validate", spy)
    return seen


def test_unknown_members_at_a_completion_route_are_counted_not_each_validated(
    api: ApiHarness,
    completion: tuple[RemoteAttempt, _RecordingClient],
    raised: list[BaseException],
    body_models: list[type],
) -> None:
    attempt, recording = completion
    response = api.client.post(
        attempt.url(),
        headers={"Content-Type": "application/json"},
        content=_unknown_members({"task_token": attempt.token, "output": {}}),
    )
    assert response.status_code == 422, response.text[:500]
    document = response.json()
    assert document["detail"] == f"{UNKNOWN} invalid field(s), the first {MAX_REFUSALS} listed"
    assert [error["pointer"] for error in document["errors"]] == [f"/{n}" for n in range(MAX_REFUSALS)]
    [error] = raised
    assert len(error.errors()) <= MAX_REFUSALS  # type: ignore[attr-defined]  # not one per unknown member
    assert body_models == [StepCompletion]
    # A refused body spends nothing: the same token then reports the attempt's result.
    assert recording.raised == []
    done = api.client.post(attempt.url(), json={"task_token": attempt.token, "output": {"image": "x"}})
    assert done.status_code == 200, done.text
    assert len(recording.raised) == 1


def _forged_token(attempt: RemoteAttempt) -> str:
    """The attempt's token with its signature replaced (what anyone who saw a token's claims can send)."""
    prefix, payload, _ = attempt.token.split(".")
    return f"{prefix}.{payload}.c2lnbmF0dXJl"


@pytest.mark.parametrize("route", ["/complete", "/fail", "/compensation/complete", "/compensation/fail"])
@pytest.mark.parametrize("token", ["missing", "forged", "not a token", "expired"])
def test_a_completion_without_a_valid_task_token_is_401_before_its_body_is_validated(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    completion: tuple[RemoteAttempt, _RecordingClient],
    raised: list[BaseException],
    body_models: list[type],
    route: str,
    token: str,
) -> None:
    attempt, recording = completion
    first: dict[str, Any] = {"output": {}, "error": 5, "retryable": "maybe"}
    if token == "expired":
        with tenant_transaction(attempt.tenant_id, pool=app_pool) as conn:
            first["task_token"] = task_tokens.issue(
                conn, attempt.tenant_id, attempt.key, 0, nonce="expired", expires_at=datetime.now(UTC)
            ).token
    elif token != "missing":
        first["task_token"] = _forged_token(attempt) if token == "forged" else token
    url = attempt.url().removesuffix("/complete") + route
    for path in (url, url.replace(str(attempt.key.execution_id), "not-an-execution")):
        response = api.client.post(path, headers={"Content-Type": "application/json"}, content=_unknown_members(first))
        assert response.status_code == 401, response.text[:500]
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/invalid-task-token")
    assert [type(error).__name__ for error in raised] == ["ProblemError", "ProblemError"]
    assert body_models == []  # no model validated for a caller who holds no valid token
    assert recording.raised == []


def test_a_malformed_path_with_a_valid_task_token_is_still_422(
    api: ApiHarness, completion: tuple[RemoteAttempt, _RecordingClient]
) -> None:
    attempt, recording = completion
    url = attempt.url().replace(str(attempt.key.execution_id), "not-an-execution")
    response = api.client.post(url, json={"task_token": attempt.token, "output": {}})
    assert response.status_code == 422, response.text[:500]
    assert [error["pointer"] for error in response.json()["errors"]] == ["/path/execution_id"]
    # A token for another attempt is still 403, as before.
    other = api.client.post(attempt.url(step_id="deploy"), json={"task_token": attempt.token, "output": {}})
    assert other.status_code == 403, other.text[:500]
    assert recording.raised == []
