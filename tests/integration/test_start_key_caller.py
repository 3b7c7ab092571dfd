# intent_ref: platform.idempotency
"""An execute or retry Idempotency-Key is bound to its caller, as every tenant key is (ADR 0012): the same key from
another principal of the tenant is 422 `idempotency-key` on the API and a rejection at the ingress, never the first
caller's execution; the caller's own repeat and a redelivered event still replay, and a child's key (the platform's
own) replays whoever asks."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.api.durable import get_durable_client
from shared.api.security import token_validator
from shared.auth.principal import Requester
from shared.auth.tokens import TokenValidator
from shared.engine.start import STALE_START_S, IdempotencyConflictError, StartRequest
from shared.engine.start_service import begin, fail_start
from shared.ingress.process import process_event
from shared.ingress.request import IngressEvent
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_start_service import Decider, TaskHub, _age_claim, _provision

pytestmark = pytest.mark.integration

EXECUTOR = ["Intent.Executor", "Intent.Deployer"]
READER = ["Intent.Reader"]


def _hub(api: ApiHarness) -> TaskHub:
    hub = TaskHub()
    api.client.app.dependency_overrides[get_durable_client] = lambda: hub  # type: ignore[attr-defined]
    return hub


@pytest.fixture
def hub(api: ApiHarness) -> Any:
    yield _hub(api)
    api.client.app.dependency_overrides.pop(get_durable_client, None)  # type: ignore[attr-defined]


def _refused(response: Any) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("/idempotency-key"), response.text


def test_another_principal_cannot_replay_an_execute_by_its_key(api: ApiHarness, hub: TaskHub) -> None:
    # Answered 202 `created: false` with the first caller's execution id: another Executor of the tenant who knew
    # the key learned that execution and was told their own request had been accepted.
    name = f"keys-{uuid.uuid4().hex[:8]}"
    _tenant, intent_id = _provision(api, name)
    key = {"Idempotency-Key": f"exec-{uuid.uuid4().hex}"}
    path = f"/api/v1/intents/{intent_id}/execute"
    first = api.client.post(path, json={}, headers={**api.headers(name, EXECUTOR), **key})
    assert (first.status_code, first.json()["created"]) == (202, True), first.text
    execution_id = first.json()["execution_id"]

    someone_else = api.headers(name, EXECUTOR, oid=str(uuid.uuid4()))
    other = api.client.post(path, json={}, headers={**someone_else, **key})
    _refused(other)
    assert execution_id not in other.text
    _refused(api.client.post(path, json={"input": {"n": 1}}, headers={**someone_else, **key}))

    again = api.client.post(path, json={}, headers={**api.headers(name, EXECUTOR), **key})
    assert (again.status_code, again.json()["execution_id"], again.json()["created"]) == (202, execution_id, False)
    assert hub.calls == [execution_id]  # started once, by its own caller


def test_another_principal_does_not_take_over_a_stalled_start_by_its_key(api: ApiHarness, hub: TaskHub) -> None:
    # A pending execution whose claim went stale is started by the replay that takes the claim over: another
    # principal's request with the key started the first caller's execution.
    name = f"keys-{uuid.uuid4().hex[:8]}"
    _tenant, intent_id = _provision(api, name)
    key = {"Idempotency-Key": f"stalled-{uuid.uuid4().hex}"}
    path = f"/api/v1/intents/{intent_id}/execute"
    first = api.client.post(path, json={}, headers={**api.headers(name, EXECUTOR), **key})
    assert first.status_code == 202, first.text
    execution_id = first.json()["execution_id"]
    hub.instances.clear()  # as if its starter died before the orchestration was started
    hub.calls.clear()
    _age_claim(api, execution_id, STALE_START_S + 1)

    _refused(api.client.post(path, json={}, headers={**api.headers(name, EXECUTOR, oid=str(uuid.uuid4())), **key}))
    assert hub.calls == [] and hub.asked == []
    again = api.client.post(path, json={}, headers={**api.headers(name, EXECUTOR), **key})
    assert (again.status_code, again.json()["created"]) == (202, False), again.text
    assert hub.calls == [execution_id]


def test_another_principal_cannot_replay_a_retry_by_its_key(api: ApiHarness, hub: TaskHub) -> None:
    name = f"keys-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _provision(api, name)
    started = api.client.post(f"/api/v1/intents/{intent_id}/execute", json={}, headers=api.headers(name, EXECUTOR))
    assert started.status_code == 202, started.text
    failed = uuid.UUID(started.json()["execution_id"])
    fail_start(tenant.id, failed, "for the test")
    key = {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    path = f"/api/v1/executions/{failed}/retry"
    first = api.client.post(path, json={}, headers={**api.headers(name, EXECUTOR), **key})
    assert (first.status_code, first.json()["created"]) == (202, True), first.text
    retry_id = first.json()["execution_id"]

    other = api.client.post(path, json={}, headers={**api.headers(name, EXECUTOR, oid=str(uuid.uuid4())), **key})
    _refused(other)
    assert retry_id not in other.text
    again = api.client.post(path, json={}, headers={**api.headers(name, EXECUTOR), **key})
    assert (again.status_code, again.json()["execution_id"], again.json()["created"]) == (202, retry_id, False)


def _validator(api: ApiHarness) -> TokenValidator:
    validator: TokenValidator = api.client.app.dependency_overrides[token_validator]()  # type: ignore[attr-defined]
    return validator


def _event(api: ApiHarness, tenant: str, body: dict[str, Any], sequence: int, oid: str | None = None) -> IngressEvent:
    return IngressEvent(
        body=json.dumps(body).encode(),
        partition_id="1",
        sequence_number=sequence,
        enqueued_time=datetime.now(UTC),
        properties={"authorization": f"Bearer {api.token(tenant, EXECUTOR, oid=oid)}"},
    )


def test_the_ingress_rejects_another_producers_key_and_replays_a_redelivery(api: ApiHarness) -> None:
    name = f"keys-{uuid.uuid4().hex[:8]}"
    _tenant, intent_id = _provision(api, name)
    body = {"intent_id": str(intent_id), "idempotency_key": f"event-{uuid.uuid4().hex}"}
    hub = TaskHub()
    event = _event(api, name, body, 1)
    first = asyncio.run(process_event(event, hub, _validator(api)))
    assert first.created and first.execution_id is not None
    redelivered = asyncio.run(process_event(event, hub, _validator(api)))  # the same principal: a replay
    assert (redelivered.execution_id, redelivered.created, redelivered.reason) == (first.execution_id, False, None)

    other = asyncio.run(process_event(_event(api, name, body, 2, oid=str(uuid.uuid4())), hub, _validator(api)))
    assert (other.execution_id, other.reason) == (None, "invalid")
    listed = api.client.get("/api/v1/ingress/rejections", headers=api.headers(name, READER))
    assert listed.status_code == 200, listed.text
    [rejection] = listed.json()["items"]
    assert rejection["detail"]["type"].endswith("/idempotency-key") and rejection["detail"]["status"] == 422
    assert str(first.execution_id) not in json.dumps(rejection)
    assert hub.calls == [str(first.execution_id)]

    # A key the API's caller used is the same key at the ingress (one namespace): still bound to that caller.
    by_api = {**api.headers(name, EXECUTOR), "Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
    hub2 = _hub(api)
    try:
        made = api.client.post(f"/api/v1/intents/{intent_id}/execute", json={}, headers=by_api)
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client, None)  # type: ignore[attr-defined]
    assert made.status_code == 202 and hub2.calls == [made.json()["execution_id"]]
    foreign = {"intent_id": str(intent_id), "idempotency_key": by_api["Idempotency-Key"]}
    refused = asyncio.run(process_event(_event(api, name, foreign, 3, oid=str(uuid.uuid4())), hub, _validator(api)))
    assert (refused.execution_id, refused.reason) == (None, "invalid")


def test_a_childs_key_is_the_platforms_and_replays_whoever_asks(api: ApiHarness) -> None:
    # A child's key (`child:<execution>:<step>:<attempt>`) is never a caller's: each dispatch of its step replays it.
    name = f"keys-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _provision(api, name)
    key = f"child:{uuid.uuid4()}:run:1"

    def start(requester: str) -> Any:
        who = Requester(requester, frozenset(EXECUTOR), app_only=False)
        request = StartRequest(intent_id=intent_id, idempotency_key=key, requester=who)
        return begin(tenant, lambda _conn: request, decide=Decider(True))

    first = start(f"{uuid.uuid4()}/{uuid.uuid4()}")
    again = start(f"{uuid.uuid4()}/{uuid.uuid4()}")
    assert (again.execution.id, again.created) == (first.execution.id, False)
    # A caller's key, through the same service: bound to its requester.
    own = f"own-{uuid.uuid4().hex}"
    who = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset(EXECUTOR), app_only=False)
    begin(
        tenant,
        lambda _conn: StartRequest(intent_id=intent_id, idempotency_key=own, requester=who),
        decide=Decider(True),
    )
    stranger = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset(EXECUTOR), app_only=False)
    with pytest.raises(IdempotencyConflictError):
        begin(
            tenant,
            lambda _conn: StartRequest(intent_id=intent_id, idempotency_key=own, requester=stranger),
            decide=Decider(True),
        )
